"""A GGUF file of a Hugging Face repository imported into the model store: `hf:ORG/REPO/FILE.gguf[@REVISION]`.

The coordinator downloads it with huggingface_hub (`hf_hub_download`: HF_ENDPOINT for a mirror, HF_TOKEN for a
gated repository, resumed after a cut from its own cache) at the commit the revision resolves to, so the revision
cannot move under the download; the file's SHA-256 (the hub's X-Linked-Etag of an LFS file) is checked by the
store as any upload is, and devices then fetch it from the coordinator, never from the hub.
"""

import dataclasses
import os
import pathlib
import re
import shutil

from fleetfit.coordinator.service.model_store import DIGEST, ModelStore, StoreRefused, checked_name
from fleetfit.v1 import fleetfit_pb2 as pb

PREFIX = "hf:"
REF = re.compile(r"hf:([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})/((?:[\w.-]{1,200}/){0,8}[\w.-]{1,200}\.gguf)"
                 r"(?:@([\w./-]{1,200}))?")


@dataclasses.dataclass(frozen=True)
class HfRef:
    repo_id: str
    filename: str
    revision: str | None

    @property
    def stem(self) -> str:
        return pathlib.PurePosixPath(self.filename).stem


def is_hf_ref(ref: str) -> bool:
    return ref.startswith(PREFIX)


def parse(ref: str) -> HfRef:
    m = REF.fullmatch(ref.strip())
    if not m or ".." in ref:
        raise StoreRefused(f"{ref[:120]!r} is not a Hugging Face file (hf:ORG/REPO/FILE.gguf or "
                           "hf:ORG/REPO/FILE.gguf@REVISION)")
    return HfRef(f"{m.group(1)}/{m.group(2)}", m.group(3), m.group(4))


def import_file(store: ModelStore, ref: str, name: str = "", added_by: str = "") -> pb.StoredModel:
    """Download `ref` (hf:...) into the store as `name` (default: the file's stem); StoreRefused (one line) for a
    bad reference, an unreachable hub or mirror, a file that is not there, or bytes that do not match the hub's
    SHA-256."""
    hf = parse(ref)
    name = checked_name(name or hf.stem)
    try:
        import huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError
    except ImportError:
        raise StoreRefused("hf: models need huggingface_hub on the coordinator: pip install 'fleetfit[hf]'") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not when huggingface_hub was imported
    cache = store.root / "hf-cache"
    try:
        url = huggingface_hub.hf_hub_url(hf.repo_id, hf.filename, revision=hf.revision, endpoint=endpoint)
        meta = huggingface_hub.get_hf_file_metadata(url)
        if not meta.commit_hash:
            raise StoreRefused(f"{endpoint or 'the hub'} did not say which commit {ref} is (no X-Repo-Commit)")
        path = pathlib.Path(huggingface_hub.hf_hub_download(hf.repo_id, hf.filename, revision=meta.commit_hash,
                                                            cache_dir=cache, endpoint=endpoint))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        if isinstance(exc, StoreRefused):
            raise
        raise StoreRefused(f"cannot download {ref} from {endpoint or 'huggingface.co'}: "
                           f"{' '.join(str(exc).split())[:200]}") from None
    etag = (meta.etag or "").strip('"').lower()
    source = f"{ref.split('@')[0]}@{meta.commit_hash[:12]}"
    try:
        return store.add_file(path, name, f"{source} by {added_by}" if added_by else source,
                              etag if DIGEST.fullmatch(etag) else None)
    finally:  # stored or refused, the download is done with (a cut one stays: hf_hub_download resumes it)
        shutil.rmtree(cache, ignore_errors=True)
