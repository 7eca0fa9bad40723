from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_KIND_UNSPECIFIED: _ClassVar[FailureKind]
    FAILURE_KIND_OOM: _ClassVar[FailureKind]
    FAILURE_KIND_SIGNAL: _ClassVar[FailureKind]
    FAILURE_KIND_TIMEOUT: _ClassVar[FailureKind]
    FAILURE_KIND_ERROR: _ClassVar[FailureKind]

class ProvenanceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVENANCE_KIND_UNSPECIFIED: _ClassVar[ProvenanceKind]
    PROVENANCE_KIND_MEASURED: _ClassVar[ProvenanceKind]
    PROVENANCE_KIND_PREDICTED: _ClassVar[ProvenanceKind]
    PROVENANCE_KIND_ESTIMATED: _ClassVar[ProvenanceKind]

class Bottleneck(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOTTLENECK_UNSPECIFIED: _ClassVar[Bottleneck]
    BOTTLENECK_MEMORY: _ClassVar[Bottleneck]
    BOTTLENECK_COMPUTE: _ClassVar[Bottleneck]

class DeviceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_STATUS_UNSPECIFIED: _ClassVar[DeviceStatus]
    DEVICE_STATUS_ONLINE: _ClassVar[DeviceStatus]
    DEVICE_STATUS_LOST: _ClassVar[DeviceStatus]
    DEVICE_STATUS_PROBING: _ClassVar[DeviceStatus]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_DONE: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_FITS_COMFORTABLY: _ClassVar[Verdict]
    VERDICT_TIGHT: _ClassVar[Verdict]
    VERDICT_DOES_NOT_FIT: _ClassVar[Verdict]
    VERDICT_UNKNOWN: _ClassVar[Verdict]
FAILURE_KIND_UNSPECIFIED: FailureKind
FAILURE_KIND_OOM: FailureKind
FAILURE_KIND_SIGNAL: FailureKind
FAILURE_KIND_TIMEOUT: FailureKind
FAILURE_KIND_ERROR: FailureKind
PROVENANCE_KIND_UNSPECIFIED: ProvenanceKind
PROVENANCE_KIND_MEASURED: ProvenanceKind
PROVENANCE_KIND_PREDICTED: ProvenanceKind
PROVENANCE_KIND_ESTIMATED: ProvenanceKind
BOTTLENECK_UNSPECIFIED: Bottleneck
BOTTLENECK_MEMORY: Bottleneck
BOTTLENECK_COMPUTE: Bottleneck
DEVICE_STATUS_UNSPECIFIED: DeviceStatus
DEVICE_STATUS_ONLINE: DeviceStatus
DEVICE_STATUS_LOST: DeviceStatus
DEVICE_STATUS_PROBING: DeviceStatus
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_DONE: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
VERDICT_UNSPECIFIED: Verdict
VERDICT_FITS_COMFORTABLY: Verdict
VERDICT_TIGHT: Verdict
VERDICT_DOES_NOT_FIT: Verdict
VERDICT_UNKNOWN: Verdict

class GpuInfo(_message.Message):
    __slots__ = ("index", "name", "uuid", "memory_total_bytes", "driver_version", "unified_memory")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    driver_version: str
    unified_memory: bool
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., uuid: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., driver_version: _Optional[str] = ..., unified_memory: _Optional[bool] = ...) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "available", "version", "reason", "capabilities", "models")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    version: str
    reason: str
    capabilities: _containers.RepeatedCompositeFieldContainer[BackendCapability]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ..., capabilities: _Optional[_Iterable[_Union[BackendCapability, _Mapping]]] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class BackendCapability(_message.Message):
    __slots__ = ("device", "precision", "supported", "reason")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device: str
    precision: str
    supported: bool
    reason: str
    def __init__(self, device: _Optional[str] = ..., precision: _Optional[str] = ..., supported: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class DeviceInventory(_message.Message):
    __slots__ = ("device_id", "hostname", "os", "arch", "cpu_model", "cpu_cores_physical", "cpu_cores_logical", "ram_total_bytes", "ram_available_bytes", "gpus", "backends", "llama_system_info", "gpu_probe_note", "agent_version", "probes", "host_ram_total_bytes", "memory_source", "cpus_usable", "cpu_source", "trials_pending")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_PHYSICAL_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_LOGICAL_FIELD_NUMBER: _ClassVar[int]
    RAM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAM_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    LLAMA_SYSTEM_INFO_FIELD_NUMBER: _ClassVar[int]
    GPU_PROBE_NOTE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    HOST_RAM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CPUS_USABLE_FIELD_NUMBER: _ClassVar[int]
    CPU_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_PENDING_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hostname: str
    os: str
    arch: str
    cpu_model: str
    cpu_cores_physical: int
    cpu_cores_logical: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    llama_system_info: str
    gpu_probe_note: str
    agent_version: str
    probes: DeviceProbes
    host_ram_total_bytes: int
    memory_source: str
    cpus_usable: int
    cpu_source: str
    trials_pending: bool
    def __init__(self, device_id: _Optional[str] = ..., hostname: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_cores_physical: _Optional[int] = ..., cpu_cores_logical: _Optional[int] = ..., ram_total_bytes: _Optional[int] = ..., ram_available_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ..., llama_system_info: _Optional[str] = ..., gpu_probe_note: _Optional[str] = ..., agent_version: _Optional[str] = ..., probes: _Optional[_Union[DeviceProbes, _Mapping]] = ..., host_ram_total_bytes: _Optional[int] = ..., memory_source: _Optional[str] = ..., cpus_usable: _Optional[int] = ..., cpu_source: _Optional[str] = ..., trials_pending: _Optional[bool] = ...) -> None: ...

class BandwidthProbe(_message.Message):
    __slots__ = ("target", "gb_per_s", "samples_gb_per_s", "bytes_per_array", "threads", "provenance", "note")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    GB_PER_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_GB_PER_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_ARRAY_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    target: str
    gb_per_s: float
    samples_gb_per_s: _containers.RepeatedScalarFieldContainer[float]
    bytes_per_array: int
    threads: int
    provenance: Provenance
    note: str
    def __init__(self, target: _Optional[str] = ..., gb_per_s: _Optional[float] = ..., samples_gb_per_s: _Optional[_Iterable[float]] = ..., bytes_per_array: _Optional[int] = ..., threads: _Optional[int] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class MatmulProbe(_message.Message):
    __slots__ = ("target", "precision", "gflop_per_s", "n", "provenance", "note")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    GFLOP_PER_S_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    target: str
    precision: str
    gflop_per_s: float
    n: int
    provenance: Provenance
    note: str
    def __init__(self, target: _Optional[str] = ..., precision: _Optional[str] = ..., gflop_per_s: _Optional[float] = ..., n: _Optional[int] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class DeviceProbes(_message.Message):
    __slots__ = ("bandwidth", "matmul", "probed_unix_s", "cache_key")
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    MATMUL_FIELD_NUMBER: _ClassVar[int]
    PROBED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    bandwidth: _containers.RepeatedCompositeFieldContainer[BandwidthProbe]
    matmul: _containers.RepeatedCompositeFieldContainer[MatmulProbe]
    probed_unix_s: float
    cache_key: str
    def __init__(self, bandwidth: _Optional[_Iterable[_Union[BandwidthProbe, _Mapping]]] = ..., matmul: _Optional[_Iterable[_Union[MatmulProbe, _Mapping]]] = ..., probed_unix_s: _Optional[float] = ..., cache_key: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "path", "shape", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    shape: Architecture
    sha256: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., shape: _Optional[_Union[Architecture, _Mapping]] = ..., sha256: _Optional[str] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("model", "backend", "quant", "n_prompt", "n_gen", "repetitions", "threads", "timeout_s", "idle_baseline_s", "device", "gpu_layers", "parallel", "decode_depth", "quality")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    N_PROMPT_FIELD_NUMBER: _ClassVar[int]
    N_GEN_FIELD_NUMBER: _ClassVar[int]
    REPETITIONS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    IDLE_BASELINE_S_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_FIELD_NUMBER: _ClassVar[int]
    DECODE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    backend: str
    quant: str
    n_prompt: int
    n_gen: int
    repetitions: int
    threads: int
    timeout_s: float
    idle_baseline_s: float
    device: str
    gpu_layers: int
    parallel: _containers.RepeatedScalarFieldContainer[int]
    decode_depth: int
    quality: QualityPass
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., backend: _Optional[str] = ..., quant: _Optional[str] = ..., n_prompt: _Optional[int] = ..., n_gen: _Optional[int] = ..., repetitions: _Optional[int] = ..., threads: _Optional[int] = ..., timeout_s: _Optional[float] = ..., idle_baseline_s: _Optional[float] = ..., device: _Optional[str] = ..., gpu_layers: _Optional[int] = ..., parallel: _Optional[_Iterable[int]] = ..., decode_depth: _Optional[int] = ..., quality: _Optional[_Union[QualityPass, _Mapping]] = ...) -> None: ...

class QualityPass(_message.Message):
    __slots__ = ("context_tokens", "chunks")
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    context_tokens: int
    chunks: int
    def __init__(self, context_tokens: _Optional[int] = ..., chunks: _Optional[int] = ...) -> None: ...

class Stat(_message.Message):
    __slots__ = ("mean", "stdev", "samples")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STDEV_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    mean: float
    stdev: float
    samples: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mean: _Optional[float] = ..., stdev: _Optional[float] = ..., samples: _Optional[_Iterable[float]] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("method", "scope", "provenance_kind")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_KIND_FIELD_NUMBER: _ClassVar[int]
    method: str
    scope: str
    provenance_kind: ProvenanceKind
    def __init__(self, method: _Optional[str] = ..., scope: _Optional[str] = ..., provenance_kind: _Optional[_Union[ProvenanceKind, str]] = ...) -> None: ...

class ProfileResult(_message.Message):
    __slots__ = ("result_id", "device_id", "request", "failure", "error", "model_name", "model_file", "model_sha256", "model_file_bytes", "model_n_params", "model_arch", "quant", "backend_version", "backend_build", "threads", "n_batch", "n_ubatch", "n_ctx", "n_prompt", "n_gen", "repetitions", "warmup", "load_time_s", "ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes", "baseline_rss_bytes", "memory_method", "provenance", "started_unix_s", "wall_s", "power", "roofline", "model_origin", "memory_limit_bytes", "compute_device", "weight_bytes", "gpu_memory", "gpu_layers", "serving", "n_depth", "backend_commit")
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_N_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARCH_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_BUILD_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    N_BATCH_FIELD_NUMBER: _ClassVar[int]
    N_UBATCH_FIELD_NUMBER: _ClassVar[int]
    N_CTX_FIELD_NUMBER: _ClassVar[int]
    N_PROMPT_FIELD_NUMBER: _ClassVar[int]
    N_GEN_FIELD_NUMBER: _ClassVar[int]
    REPETITIONS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_METHOD_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    ROOFLINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    N_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_COMMIT_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    device_id: str
    request: ProfileRequest
    failure: FailureKind
    error: str
    model_name: str
    model_file: str
    model_sha256: str
    model_file_bytes: int
    model_n_params: int
    model_arch: str
    quant: str
    backend_version: str
    backend_build: str
    threads: int
    n_batch: int
    n_ubatch: int
    n_ctx: int
    n_prompt: int
    n_gen: int
    repetitions: int
    warmup: bool
    load_time_s: float
    ttft_ms: Stat
    prefill_tokens_per_s: Stat
    decode_tokens_per_s: Stat
    peak_rss_bytes: int
    baseline_rss_bytes: int
    memory_method: str
    provenance: Provenance
    started_unix_s: float
    wall_s: float
    power: PowerTelemetry
    roofline: Roofline
    model_origin: str
    memory_limit_bytes: int
    compute_device: str
    weight_bytes: int
    gpu_memory: GpuMemory
    gpu_layers: int
    serving: _containers.RepeatedCompositeFieldContainer[ServingPoint]
    n_depth: int
    backend_commit: str
    def __init__(self, result_id: _Optional[str] = ..., device_id: _Optional[str] = ..., request: _Optional[_Union[ProfileRequest, _Mapping]] = ..., failure: _Optional[_Union[FailureKind, str]] = ..., error: _Optional[str] = ..., model_name: _Optional[str] = ..., model_file: _Optional[str] = ..., model_sha256: _Optional[str] = ..., model_file_bytes: _Optional[int] = ..., model_n_params: _Optional[int] = ..., model_arch: _Optional[str] = ..., quant: _Optional[str] = ..., backend_version: _Optional[str] = ..., backend_build: _Optional[str] = ..., threads: _Optional[int] = ..., n_batch: _Optional[int] = ..., n_ubatch: _Optional[int] = ..., n_ctx: _Optional[int] = ..., n_prompt: _Optional[int] = ..., n_gen: _Optional[int] = ..., repetitions: _Optional[int] = ..., warmup: _Optional[bool] = ..., load_time_s: _Optional[float] = ..., ttft_ms: _Optional[_Union[Stat, _Mapping]] = ..., prefill_tokens_per_s: _Optional[_Union[Stat, _Mapping]] = ..., decode_tokens_per_s: _Optional[_Union[Stat, _Mapping]] = ..., peak_rss_bytes: _Optional[int] = ..., baseline_rss_bytes: _Optional[int] = ..., memory_method: _Optional[str] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., started_unix_s: _Optional[float] = ..., wall_s: _Optional[float] = ..., power: _Optional[_Union[PowerTelemetry, _Mapping]] = ..., roofline: _Optional[_Union[Roofline, _Mapping]] = ..., model_origin: _Optional[str] = ..., memory_limit_bytes: _Optional[int] = ..., compute_device: _Optional[str] = ..., weight_bytes: _Optional[int] = ..., gpu_memory: _Optional[_Union[GpuMemory, _Mapping]] = ..., gpu_layers: _Optional[int] = ..., serving: _Optional[_Iterable[_Union[ServingPoint, _Mapping]]] = ..., n_depth: _Optional[int] = ..., backend_commit: _Optional[str] = ...) -> None: ...

class ServingPoint(_message.Message):
    __slots__ = ("parallel", "aggregate_decode_tokens_per_s", "per_stream_decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "peak_memory_bytes", "decode_energy_per_token_j", "gpu_memory", "unsupported_reason", "energy_provenance_kind")
    PARALLEL_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PER_STREAM_DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_P50_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_P99_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DECODE_ENERGY_PER_TOKEN_J_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_REASON_FIELD_NUMBER: _ClassVar[int]
    ENERGY_PROVENANCE_KIND_FIELD_NUMBER: _ClassVar[int]
    parallel: int
    aggregate_decode_tokens_per_s: Stat
    per_stream_decode_tokens_per_s: Stat
    prefill_tokens_per_s: Stat
    ttft_ms_p50: Stat
    ttft_ms_p99: Stat
    peak_memory_bytes: Stat
    decode_energy_per_token_j: float
    gpu_memory: GpuMemory
    unsupported_reason: str
    energy_provenance_kind: ProvenanceKind
    def __init__(self, parallel: _Optional[int] = ..., aggregate_decode_tokens_per_s: _Optional[_Union[Stat, _Mapping]] = ..., per_stream_decode_tokens_per_s: _Optional[_Union[Stat, _Mapping]] = ..., prefill_tokens_per_s: _Optional[_Union[Stat, _Mapping]] = ..., ttft_ms_p50: _Optional[_Union[Stat, _Mapping]] = ..., ttft_ms_p99: _Optional[_Union[Stat, _Mapping]] = ..., peak_memory_bytes: _Optional[_Union[Stat, _Mapping]] = ..., decode_energy_per_token_j: _Optional[float] = ..., gpu_memory: _Optional[_Union[GpuMemory, _Mapping]] = ..., unsupported_reason: _Optional[str] = ..., energy_provenance_kind: _Optional[_Union[ProvenanceKind, str]] = ...) -> None: ...

class GpuMemory(_message.Message):
    __slots__ = ("device_name", "torch_allocated_peak_bytes", "torch_reserved_peak_bytes", "nvml_process_used_bytes", "cuda_context_bytes", "fit_bytes", "note", "backend_buffer_bytes")
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    TORCH_ALLOCATED_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    TORCH_RESERVED_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    NVML_PROCESS_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CUDA_CONTEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    FIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_BUFFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    device_name: str
    torch_allocated_peak_bytes: int
    torch_reserved_peak_bytes: int
    nvml_process_used_bytes: int
    cuda_context_bytes: int
    fit_bytes: int
    note: str
    backend_buffer_bytes: int
    def __init__(self, device_name: _Optional[str] = ..., torch_allocated_peak_bytes: _Optional[int] = ..., torch_reserved_peak_bytes: _Optional[int] = ..., nvml_process_used_bytes: _Optional[int] = ..., cuda_context_bytes: _Optional[int] = ..., fit_bytes: _Optional[int] = ..., note: _Optional[str] = ..., backend_buffer_bytes: _Optional[int] = ...) -> None: ...

class PhaseEnergy(_message.Message):
    __slots__ = ("phase", "source", "scope", "method", "rate_hz", "duration_s", "energy_mj", "net_energy_mj", "idle_power_w", "average_power_w", "peak_power_w", "tokens", "joules_per_token", "net_joules_per_token", "tokens_per_joule", "samples", "samples_skipped", "coverage", "note", "provenance_kind")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MJ_FIELD_NUMBER: _ClassVar[int]
    NET_ENERGY_MJ_FIELD_NUMBER: _ClassVar[int]
    IDLE_POWER_W_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_POWER_W_FIELD_NUMBER: _ClassVar[int]
    PEAK_POWER_W_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    JOULES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NET_JOULES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_JOULE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_KIND_FIELD_NUMBER: _ClassVar[int]
    phase: str
    source: str
    scope: str
    method: str
    rate_hz: float
    duration_s: float
    energy_mj: float
    net_energy_mj: float
    idle_power_w: float
    average_power_w: float
    peak_power_w: float
    tokens: int
    joules_per_token: float
    net_joules_per_token: float
    tokens_per_joule: float
    samples: int
    samples_skipped: int
    coverage: float
    note: str
    provenance_kind: ProvenanceKind
    def __init__(self, phase: _Optional[str] = ..., source: _Optional[str] = ..., scope: _Optional[str] = ..., method: _Optional[str] = ..., rate_hz: _Optional[float] = ..., duration_s: _Optional[float] = ..., energy_mj: _Optional[float] = ..., net_energy_mj: _Optional[float] = ..., idle_power_w: _Optional[float] = ..., average_power_w: _Optional[float] = ..., peak_power_w: _Optional[float] = ..., tokens: _Optional[int] = ..., joules_per_token: _Optional[float] = ..., net_joules_per_token: _Optional[float] = ..., tokens_per_joule: _Optional[float] = ..., samples: _Optional[int] = ..., samples_skipped: _Optional[int] = ..., coverage: _Optional[float] = ..., note: _Optional[str] = ..., provenance_kind: _Optional[_Union[ProvenanceKind, str]] = ...) -> None: ...

class PowerTelemetry(_message.Message):
    __slots__ = ("phases", "headline_source", "idle_baseline_s", "rate_hz", "declined", "warmup_excluded", "provenance_kind")
    PHASES_FIELD_NUMBER: _ClassVar[int]
    HEADLINE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    IDLE_BASELINE_S_FIELD_NUMBER: _ClassVar[int]
    RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    DECLINED_FIELD_NUMBER: _ClassVar[int]
    WARMUP_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_KIND_FIELD_NUMBER: _ClassVar[int]
    phases: _containers.RepeatedCompositeFieldContainer[PhaseEnergy]
    headline_source: str
    idle_baseline_s: float
    rate_hz: float
    declined: _containers.RepeatedScalarFieldContainer[str]
    warmup_excluded: bool
    provenance_kind: ProvenanceKind
    def __init__(self, phases: _Optional[_Iterable[_Union[PhaseEnergy, _Mapping]]] = ..., headline_source: _Optional[str] = ..., idle_baseline_s: _Optional[float] = ..., rate_hz: _Optional[float] = ..., declined: _Optional[_Iterable[str]] = ..., warmup_excluded: _Optional[bool] = ..., provenance_kind: _Optional[_Union[ProvenanceKind, str]] = ...) -> None: ...

class Roofline(_message.Message):
    __slots__ = ("weight_bytes_per_token", "kv_cache_bytes_per_token", "bytes_per_token", "flops_per_token", "arithmetic_intensity_flop_per_byte", "achieved_gb_per_s", "device_bandwidth_gb_per_s", "percent_of_bandwidth", "device_peak_gflop_per_s", "ridge_flop_per_byte", "mean_context_tokens", "n_layers", "n_kv_heads", "head_dim", "method", "note", "bottleneck_kind")
    WEIGHT_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FLOPS_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ARITHMETIC_INTENSITY_FLOP_PER_BYTE_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_GB_PER_S_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BANDWIDTH_GB_PER_S_FIELD_NUMBER: _ClassVar[int]
    PERCENT_OF_BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_PEAK_GFLOP_PER_S_FIELD_NUMBER: _ClassVar[int]
    RIDGE_FLOP_PER_BYTE_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    N_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_KIND_FIELD_NUMBER: _ClassVar[int]
    weight_bytes_per_token: float
    kv_cache_bytes_per_token: float
    bytes_per_token: float
    flops_per_token: float
    arithmetic_intensity_flop_per_byte: float
    achieved_gb_per_s: float
    device_bandwidth_gb_per_s: float
    percent_of_bandwidth: float
    device_peak_gflop_per_s: float
    ridge_flop_per_byte: float
    mean_context_tokens: float
    n_layers: int
    n_kv_heads: int
    head_dim: int
    method: str
    note: str
    bottleneck_kind: Bottleneck
    def __init__(self, weight_bytes_per_token: _Optional[float] = ..., kv_cache_bytes_per_token: _Optional[float] = ..., bytes_per_token: _Optional[float] = ..., flops_per_token: _Optional[float] = ..., arithmetic_intensity_flop_per_byte: _Optional[float] = ..., achieved_gb_per_s: _Optional[float] = ..., device_bandwidth_gb_per_s: _Optional[float] = ..., percent_of_bandwidth: _Optional[float] = ..., device_peak_gflop_per_s: _Optional[float] = ..., ridge_flop_per_byte: _Optional[float] = ..., mean_context_tokens: _Optional[float] = ..., n_layers: _Optional[int] = ..., n_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., method: _Optional[str] = ..., note: _Optional[str] = ..., bottleneck_kind: _Optional[_Union[Bottleneck, str]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("inventory",)
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    inventory: DeviceInventory
    def __init__(self, inventory: _Optional[_Union[DeviceInventory, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("device_id", "coordinators")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    COORDINATORS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    coordinators: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_id: _Optional[str] = ..., coordinators: _Optional[_Iterable[str]] = ...) -> None: ...

class PollJobRequest(_message.Message):
    __slots__ = ("device_id", "wait_s")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    wait_s: float
    def __init__(self, device_id: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "request", "fence", "lease_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    request: ProfileRequest
    fence: int
    lease_s: float
    def __init__(self, job_id: _Optional[str] = ..., request: _Optional[_Union[ProfileRequest, _Mapping]] = ..., fence: _Optional[int] = ..., lease_s: _Optional[float] = ...) -> None: ...

class PollJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("job_id", "result", "fence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    result: ProfileResult
    fence: int
    def __init__(self, job_id: _Optional[str] = ..., result: _Optional[_Union[ProfileResult, _Mapping]] = ..., fence: _Optional[int] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("token", "device_id", "want_client_certificate")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    WANT_CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    token: str
    device_id: str
    want_client_certificate: bool
    def __init__(self, token: _Optional[str] = ..., device_id: _Optional[str] = ..., want_client_certificate: _Optional[bool] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("device_id", "secret", "client_certificate_pem", "client_key_pem", "coordinators")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    COORDINATORS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    secret: str
    client_certificate_pem: bytes
    client_key_pem: bytes
    coordinators: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_id: _Optional[str] = ..., secret: _Optional[str] = ..., client_certificate_pem: _Optional[bytes] = ..., client_key_pem: _Optional[bytes] = ..., coordinators: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("device_id", "job_id", "fence")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    job_id: str
    fence: int
    def __init__(self, device_id: _Optional[str] = ..., job_id: _Optional[str] = ..., fence: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_s", "cancelled")
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    lease_s: float
    cancelled: bool
    def __init__(self, lease_s: _Optional[float] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class ReleaseJobRequest(_message.Message):
    __slots__ = ("device_id", "job_id", "fence")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    job_id: str
    fence: int
    def __init__(self, device_id: _Optional[str] = ..., job_id: _Optional[str] = ..., fence: _Optional[int] = ...) -> None: ...

class ReleaseJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QualityResult(_message.Message):
    __slots__ = ("result_id", "device_id", "model_name", "quant", "reference_quant", "context_tokens", "n_positions", "kl_divergence_mean", "kl_divergence_stderr", "kl_divergence_p99", "perplexity", "perplexity_stderr", "same_top_token_fraction", "file_bytes", "text_sha256", "provenance", "backend_build", "created_unix_s", "model_sha256", "reference_sha256")
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_QUANT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    N_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    KL_DIVERGENCE_MEAN_FIELD_NUMBER: _ClassVar[int]
    KL_DIVERGENCE_STDERR_FIELD_NUMBER: _ClassVar[int]
    KL_DIVERGENCE_P99_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_STDERR_FIELD_NUMBER: _ClassVar[int]
    SAME_TOP_TOKEN_FRACTION_FIELD_NUMBER: _ClassVar[int]
    FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_BUILD_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    result_id: str
    device_id: str
    model_name: str
    quant: str
    reference_quant: str
    context_tokens: int
    n_positions: int
    kl_divergence_mean: float
    kl_divergence_stderr: float
    kl_divergence_p99: float
    perplexity: float
    perplexity_stderr: float
    same_top_token_fraction: float
    file_bytes: int
    text_sha256: str
    provenance: Provenance
    backend_build: str
    created_unix_s: float
    model_sha256: str
    reference_sha256: str
    def __init__(self, result_id: _Optional[str] = ..., device_id: _Optional[str] = ..., model_name: _Optional[str] = ..., quant: _Optional[str] = ..., reference_quant: _Optional[str] = ..., context_tokens: _Optional[int] = ..., n_positions: _Optional[int] = ..., kl_divergence_mean: _Optional[float] = ..., kl_divergence_stderr: _Optional[float] = ..., kl_divergence_p99: _Optional[float] = ..., perplexity: _Optional[float] = ..., perplexity_stderr: _Optional[float] = ..., same_top_token_fraction: _Optional[float] = ..., file_bytes: _Optional[int] = ..., text_sha256: _Optional[str] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., backend_build: _Optional[str] = ..., created_unix_s: _Optional[float] = ..., model_sha256: _Optional[str] = ..., reference_sha256: _Optional[str] = ...) -> None: ...

class ReportQualityRequest(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: QualityResult
    def __init__(self, result: _Optional[_Union[QualityResult, _Mapping]] = ...) -> None: ...

class ReportQualityResponse(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("inventory", "first_seen_unix_s", "last_seen_unix_s", "results", "labels", "display_name", "refused", "last_refusal", "device_status")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    LAST_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_STATUS_FIELD_NUMBER: _ClassVar[int]
    inventory: DeviceInventory
    first_seen_unix_s: float
    last_seen_unix_s: float
    results: int
    labels: _containers.ScalarMap[str, str]
    display_name: str
    refused: int
    last_refusal: str
    device_status: DeviceStatus
    def __init__(self, inventory: _Optional[_Union[DeviceInventory, _Mapping]] = ..., first_seen_unix_s: _Optional[float] = ..., last_seen_unix_s: _Optional[float] = ..., results: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., display_name: _Optional[str] = ..., refused: _Optional[int] = ..., last_refusal: _Optional[str] = ..., device_status: _Optional[_Union[DeviceStatus, str]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "next_page_token")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    next_page_token: str
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SubmitProfileRequest(_message.Message):
    __slots__ = ("device_ids", "request")
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    request: ProfileRequest
    def __init__(self, device_ids: _Optional[_Iterable[str]] = ..., request: _Optional[_Union[ProfileRequest, _Mapping]] = ...) -> None: ...

class SubmitProfileResponse(_message.Message):
    __slots__ = ("job_ids",)
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetJobsRequest(_message.Message):
    __slots__ = ("job_ids",)
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "device_id", "result_id", "error", "attempts", "job_state")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    device_id: str
    result_id: str
    error: str
    attempts: int
    job_state: JobState
    def __init__(self, job_id: _Optional[str] = ..., device_id: _Optional[str] = ..., result_id: _Optional[str] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., job_state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class GetJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class LimitRow(_message.Message):
    __slots__ = ("device_id", "hostname", "model_name", "quant", "backend", "model_n_params", "model_file_bytes", "peak_rss_bytes", "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "n_prompt", "n_gen", "threads", "result_id", "provenance", "failure", "error", "device_name", "shape", "compute_device", "memory_bytes", "memory_method")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_N_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    N_PROMPT_FIELD_NUMBER: _ClassVar[int]
    N_GEN_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_METHOD_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hostname: str
    model_name: str
    quant: str
    backend: str
    model_n_params: int
    model_file_bytes: int
    peak_rss_bytes: int
    prefill_tokens_per_s: Stat
    decode_tokens_per_s: Stat
    ttft_ms: Stat
    n_prompt: int
    n_gen: int
    threads: int
    result_id: str
    provenance: Provenance
    failure: FailureKind
    error: str
    device_name: str
    shape: str
    compute_device: str
    memory_bytes: int
    memory_method: str
    def __init__(self, device_id: _Optional[str] = ..., hostname: _Optional[str] = ..., model_name: _Optional[str] = ..., quant: _Optional[str] = ..., backend: _Optional[str] = ..., model_n_params: _Optional[int] = ..., model_file_bytes: _Optional[int] = ..., peak_rss_bytes: _Optional[int] = ..., prefill_tokens_per_s: _Optional[_Union[Stat, _Mapping]] = ..., decode_tokens_per_s: _Optional[_Union[Stat, _Mapping]] = ..., ttft_ms: _Optional[_Union[Stat, _Mapping]] = ..., n_prompt: _Optional[int] = ..., n_gen: _Optional[int] = ..., threads: _Optional[int] = ..., result_id: _Optional[str] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., failure: _Optional[_Union[FailureKind, str]] = ..., error: _Optional[str] = ..., device_name: _Optional[str] = ..., shape: _Optional[str] = ..., compute_device: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., memory_method: _Optional[str] = ...) -> None: ...

class GetLimitTableRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetLimitTableResponse(_message.Message):
    __slots__ = ("rows", "next_page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[LimitRow]
    next_page_token: str
    def __init__(self, rows: _Optional[_Iterable[_Union[LimitRow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Architecture(_message.Message):
    __slots__ = ("name", "family", "n_layers", "hidden", "n_heads", "n_kv_heads", "ffn", "vocab", "context_length", "tied_embeddings", "rope_theta", "norm_eps", "source", "head_dim", "n_experts", "n_experts_used", "rotary_fraction", "sliding_window", "sliding_pattern")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    N_HEADS_FIELD_NUMBER: _ClassVar[int]
    N_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    FFN_FIELD_NUMBER: _ClassVar[int]
    VOCAB_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TIED_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ROPE_THETA_FIELD_NUMBER: _ClassVar[int]
    NORM_EPS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    N_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    N_EXPERTS_USED_FIELD_NUMBER: _ClassVar[int]
    ROTARY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SLIDING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SLIDING_PATTERN_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    context_length: int
    tied_embeddings: bool
    rope_theta: float
    norm_eps: float
    source: str
    head_dim: int
    n_experts: int
    n_experts_used: int
    rotary_fraction: float
    sliding_window: int
    sliding_pattern: int
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., n_layers: _Optional[int] = ..., hidden: _Optional[int] = ..., n_heads: _Optional[int] = ..., n_kv_heads: _Optional[int] = ..., ffn: _Optional[int] = ..., vocab: _Optional[int] = ..., context_length: _Optional[int] = ..., tied_embeddings: _Optional[bool] = ..., rope_theta: _Optional[float] = ..., norm_eps: _Optional[float] = ..., source: _Optional[str] = ..., head_dim: _Optional[int] = ..., n_experts: _Optional[int] = ..., n_experts_used: _Optional[int] = ..., rotary_fraction: _Optional[float] = ..., sliding_window: _Optional[int] = ..., sliding_pattern: _Optional[int] = ...) -> None: ...

class FitRequest(_message.Message):
    __slots__ = ("model_name", "quant", "min_decode_tokens_per_s", "backend", "context_tokens", "max_watts", "device", "page_size", "page_token", "streams", "shape")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    MIN_DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_WATTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    quant: str
    min_decode_tokens_per_s: float
    backend: str
    context_tokens: int
    max_watts: float
    device: str
    page_size: int
    page_token: str
    streams: int
    shape: Architecture
    def __init__(self, model_name: _Optional[str] = ..., quant: _Optional[str] = ..., min_decode_tokens_per_s: _Optional[float] = ..., backend: _Optional[str] = ..., context_tokens: _Optional[int] = ..., max_watts: _Optional[float] = ..., device: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., streams: _Optional[int] = ..., shape: _Optional[_Union[Architecture, _Mapping]] = ...) -> None: ...

class FitFigure(_message.Message):
    __slots__ = ("value", "method", "error_fraction", "provenance_kind")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_KIND_FIELD_NUMBER: _ClassVar[int]
    value: float
    method: str
    error_fraction: float
    provenance_kind: ProvenanceKind
    def __init__(self, value: _Optional[float] = ..., method: _Optional[str] = ..., error_fraction: _Optional[float] = ..., provenance_kind: _Optional[_Union[ProvenanceKind, str]] = ...) -> None: ...

class FitAnswer(_message.Message):
    __slots__ = ("device_id", "hostname", "reason", "evidence", "ram_total_bytes", "model_name", "quant", "context_tokens", "memory_bytes", "decode_tokens_per_s", "prefill_tokens_per_s", "joules_per_token", "memory_fraction", "memory_headroom_bytes", "calibration", "device_name", "backend", "stream_target_tokens_per_s", "max_streams", "streams", "stream_tokens_per_s", "aggregate_tokens_per_s", "serving_memory_bytes", "serves", "gpu_layers", "gpu_memory_bytes", "offload_decode_tokens_per_s", "kl_divergence", "fit_verdict", "provenance_kind", "outside_calibration")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    RAM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    JOULES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_HEADROOM_BYTES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    STREAM_TARGET_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    STREAM_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    SERVING_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVES_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    KL_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    FIT_VERDICT_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_KIND_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hostname: str
    reason: str
    evidence: LimitRow
    ram_total_bytes: int
    model_name: str
    quant: str
    context_tokens: int
    memory_bytes: FitFigure
    decode_tokens_per_s: FitFigure
    prefill_tokens_per_s: FitFigure
    joules_per_token: FitFigure
    memory_fraction: float
    memory_headroom_bytes: int
    calibration: _containers.RepeatedScalarFieldContainer[str]
    device_name: str
    backend: str
    stream_target_tokens_per_s: float
    max_streams: FitFigure
    streams: int
    stream_tokens_per_s: FitFigure
    aggregate_tokens_per_s: FitFigure
    serving_memory_bytes: FitFigure
    serves: bool
    gpu_layers: int
    gpu_memory_bytes: FitFigure
    offload_decode_tokens_per_s: FitFigure
    kl_divergence: FitFigure
    fit_verdict: Verdict
    provenance_kind: ProvenanceKind
    outside_calibration: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_id: _Optional[str] = ..., hostname: _Optional[str] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Union[LimitRow, _Mapping]] = ..., ram_total_bytes: _Optional[int] = ..., model_name: _Optional[str] = ..., quant: _Optional[str] = ..., context_tokens: _Optional[int] = ..., memory_bytes: _Optional[_Union[FitFigure, _Mapping]] = ..., decode_tokens_per_s: _Optional[_Union[FitFigure, _Mapping]] = ..., prefill_tokens_per_s: _Optional[_Union[FitFigure, _Mapping]] = ..., joules_per_token: _Optional[_Union[FitFigure, _Mapping]] = ..., memory_fraction: _Optional[float] = ..., memory_headroom_bytes: _Optional[int] = ..., calibration: _Optional[_Iterable[str]] = ..., device_name: _Optional[str] = ..., backend: _Optional[str] = ..., stream_target_tokens_per_s: _Optional[float] = ..., max_streams: _Optional[_Union[FitFigure, _Mapping]] = ..., streams: _Optional[int] = ..., stream_tokens_per_s: _Optional[_Union[FitFigure, _Mapping]] = ..., aggregate_tokens_per_s: _Optional[_Union[FitFigure, _Mapping]] = ..., serving_memory_bytes: _Optional[_Union[FitFigure, _Mapping]] = ..., serves: _Optional[bool] = ..., gpu_layers: _Optional[int] = ..., gpu_memory_bytes: _Optional[_Union[FitFigure, _Mapping]] = ..., offload_decode_tokens_per_s: _Optional[_Union[FitFigure, _Mapping]] = ..., kl_divergence: _Optional[_Union[FitFigure, _Mapping]] = ..., fit_verdict: _Optional[_Union[Verdict, str]] = ..., provenance_kind: _Optional[_Union[ProvenanceKind, str]] = ..., outside_calibration: _Optional[_Iterable[str]] = ...) -> None: ...

class FitResponse(_message.Message):
    __slots__ = ("answers", "next_page_token")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[FitAnswer]
    next_page_token: str
    def __init__(self, answers: _Optional[_Iterable[_Union[FitAnswer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTableRequest(_message.Message):
    __slots__ = ("name", "options", "shapes", "names")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: _containers.ScalarMap[str, str]
    shapes: _containers.RepeatedCompositeFieldContainer[Architecture]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., shapes: _Optional[_Iterable[_Union[Architecture, _Mapping]]] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTableResponse(_message.Message):
    __slots__ = ("table", "tables")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    table: Table
    tables: _containers.RepeatedCompositeFieldContainer[Table]
    def __init__(self, table: _Optional[_Union[Table, _Mapping]] = ..., tables: _Optional[_Iterable[_Union[Table, _Mapping]]] = ...) -> None: ...

class TableRow(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    def __init__(self, cells: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ...) -> None: ...

class Table(_message.Message):
    __slots__ = ("name", "title", "columns", "rows", "notes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    title: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[TableRow]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., title: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[TableRow, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[Table]
    def __init__(self, tables: _Optional[_Iterable[_Union[Table, _Mapping]]] = ...) -> None: ...

class CampaignSpec(_message.Message):
    __slots__ = ("models", "quants", "backends", "template", "shapes", "stored")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    QUANTS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    quants: _containers.RepeatedScalarFieldContainer[str]
    backends: _containers.RepeatedScalarFieldContainer[str]
    template: ProfileRequest
    shapes: _containers.RepeatedCompositeFieldContainer[Architecture]
    stored: _containers.RepeatedCompositeFieldContainer[StoredModel]
    def __init__(self, models: _Optional[_Iterable[str]] = ..., quants: _Optional[_Iterable[str]] = ..., backends: _Optional[_Iterable[str]] = ..., template: _Optional[_Union[ProfileRequest, _Mapping]] = ..., shapes: _Optional[_Iterable[_Union[Architecture, _Mapping]]] = ..., stored: _Optional[_Iterable[_Union[StoredModel, _Mapping]]] = ...) -> None: ...

class CreateCampaignRequest(_message.Message):
    __slots__ = ("selector", "spec", "max_attempts")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    selector: str
    spec: CampaignSpec
    max_attempts: int
    def __init__(self, selector: _Optional[str] = ..., spec: _Optional[_Union[CampaignSpec, _Mapping]] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class CreateCampaignResponse(_message.Message):
    __slots__ = ("campaign_id", "job_ids", "device_ids", "skipped")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    skipped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, campaign_id: _Optional[str] = ..., job_ids: _Optional[_Iterable[str]] = ..., device_ids: _Optional[_Iterable[str]] = ..., skipped: _Optional[_Iterable[str]] = ...) -> None: ...

class DeviceProgress(_message.Message):
    __slots__ = ("device_id", "done", "running", "failed", "queued", "errors", "skipped", "device_name", "cancelled")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    done: int
    running: int
    failed: int
    queued: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    skipped: _containers.RepeatedScalarFieldContainer[str]
    device_name: str
    cancelled: int
    def __init__(self, device_id: _Optional[str] = ..., done: _Optional[int] = ..., running: _Optional[int] = ..., failed: _Optional[int] = ..., queued: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ..., skipped: _Optional[_Iterable[str]] = ..., device_name: _Optional[str] = ..., cancelled: _Optional[int] = ...) -> None: ...

class CampaignStatus(_message.Message):
    __slots__ = ("campaign_id", "selector", "created_unix_s", "spec", "done", "running", "failed", "queued", "devices", "cancelled")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    selector: str
    created_unix_s: float
    spec: CampaignSpec
    done: int
    running: int
    failed: int
    queued: int
    devices: _containers.RepeatedCompositeFieldContainer[DeviceProgress]
    cancelled: int
    def __init__(self, campaign_id: _Optional[str] = ..., selector: _Optional[str] = ..., created_unix_s: _Optional[float] = ..., spec: _Optional[_Union[CampaignSpec, _Mapping]] = ..., done: _Optional[int] = ..., running: _Optional[int] = ..., failed: _Optional[int] = ..., queued: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[DeviceProgress, _Mapping]]] = ..., cancelled: _Optional[int] = ...) -> None: ...

class ListCampaignsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCampaignsResponse(_message.Message):
    __slots__ = ("campaigns", "next_page_token")
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    campaigns: _containers.RepeatedCompositeFieldContainer[CampaignStatus]
    next_page_token: str
    def __init__(self, campaigns: _Optional[_Iterable[_Union[CampaignStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCampaignRequest(_message.Message):
    __slots__ = ("campaign_id", "page_size", "page_token")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    page_size: int
    page_token: str
    def __init__(self, campaign_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetCampaignResponse(_message.Message):
    __slots__ = ("campaign", "next_page_token")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    campaign: CampaignStatus
    next_page_token: str
    def __init__(self, campaign: _Optional[_Union[CampaignStatus, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelCampaignRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class CancelCampaignResponse(_message.Message):
    __slots__ = ("dropped", "stopping", "campaign")
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    dropped: int
    stopping: int
    campaign: CampaignStatus
    def __init__(self, dropped: _Optional[int] = ..., stopping: _Optional[int] = ..., campaign: _Optional[_Union[CampaignStatus, _Mapping]] = ...) -> None: ...

class RevokeDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class RevokeDeviceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StoredModel(_message.Message):
    __slots__ = ("name", "sha256", "size_bytes", "architecture", "quant", "added_by", "added_unix_s", "n_params", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    ADDED_BY_FIELD_NUMBER: _ClassVar[int]
    ADDED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    N_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size_bytes: int
    architecture: str
    quant: str
    added_by: str
    added_unix_s: float
    n_params: int
    shape: Architecture
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., architecture: _Optional[str] = ..., quant: _Optional[str] = ..., added_by: _Optional[str] = ..., added_unix_s: _Optional[float] = ..., n_params: _Optional[int] = ..., shape: _Optional[_Union[Architecture, _Mapping]] = ...) -> None: ...

class PutModelRequest(_message.Message):
    __slots__ = ("name", "sha256", "size_bytes", "offset", "data", "added_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ADDED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size_bytes: int
    offset: int
    data: bytes
    added_by: str
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., added_by: _Optional[str] = ...) -> None: ...

class PutModelResponse(_message.Message):
    __slots__ = ("received_bytes", "model")
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    model: StoredModel
    def __init__(self, received_bytes: _Optional[int] = ..., model: _Optional[_Union[StoredModel, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[StoredModel]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[StoredModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RemoveModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveModelResponse(_message.Message):
    __slots__ = ("file_removed",)
    FILE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    file_removed: bool
    def __init__(self, file_removed: _Optional[bool] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("ref", "name", "added_by")
    REF_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDED_BY_FIELD_NUMBER: _ClassVar[int]
    ref: str
    name: str
    added_by: str
    def __init__(self, ref: _Optional[str] = ..., name: _Optional[str] = ..., added_by: _Optional[str] = ...) -> None: ...

class FetchModelRequest(_message.Message):
    __slots__ = ("device_id", "sha256", "offset", "name")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    sha256: str
    offset: int
    name: str
    def __init__(self, device_id: _Optional[str] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("offset", "data", "size_bytes", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    size_bytes: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
