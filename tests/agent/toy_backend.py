"""A toy backend for tests only: a catalogue shape as a tiny numpy "model" (an embedding table, one square matrix
per layer, the table again as the output projection), measured by the harness like every backend.

Added the way the docs say a backend is added, and nothing else: its spec entry (SPEC, in models/backends.py's
table), this module (a Backend with a runner), and its registry line (agent/backends/registry.py's MODULES).
`register()` makes those two entries at run time, in this process; `sitecustomize()` writes a sitecustomize.py
that makes them in every Python process started with it on PYTHONPATH (the agent and its workers).
"""

import pathlib

from fleetfit.agent.backends import harness
from fleetfit.agent.backends.base import Backend, WorkerJob
from fleetfit.models.backends import BackendSpec

NAME = "toy"
MODULE = "tests.agent.toy_backend"
SPEC = BackendSpec(NAME, ("f32",), ("cpu",), ("llama",), False, "a numpy toy for tests",
                   sizes=(("f32", 4.0, 4),))


def register() -> None:
    from fleetfit.agent.backends import registry
    from fleetfit.models import backends

    backends.BACKENDS[NAME] = SPEC  # the spec entry
    registry.MODULES[NAME] = MODULE  # the registry line


def sitecustomize(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"from {MODULE} import register\nregister()\n")
    return folder


class Runner(harness.Runner):
    memory_method = "peak RSS (VmHWM) of the worker process (numpy arrays)"

    def __init__(self, arch, n_prompt: int, n_gen: int):
        self.arch, self.n_prompt, self.n_ctx = arch, n_prompt, n_prompt + n_gen

    def load(self) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        a = self.arch
        self.table = rng.standard_normal((a.vocab, a.hidden), dtype=np.float32) * 0.02
        self.layers = [rng.standard_normal((a.hidden, a.hidden), dtype=np.float32) * 0.02 for _ in range(a.n_layers)]
        self.n_vocab, self.cache = a.vocab, []

    def _forward(self, tokens: list[int]):
        x = self.table[tokens]
        for w in self.layers:
            x = x + x @ w
        self.cache.extend(tokens)
        return x[-1] @ self.table.T

    def clear(self, keep: int = 0) -> None:
        del self.cache[keep:]

    def prefill(self, tokens: list[int]) -> None:
        self.logits = self._forward(tokens)

    def first_token(self) -> int:
        return int(self.logits.argmax())

    def decode(self, token: int) -> None:
        self._forward([token])

    def describe(self) -> dict:
        import numpy as np

        return {"n_batch": self.n_prompt, "n_ubatch": self.n_prompt, "n_ctx": self.n_ctx,
                "backend_version": np.__version__, "backend_build": f"numpy {np.__version__} (toy)",
                "compute_device": "cpu"}


class Toy(Backend):
    NAME = NAME
    IMPORT_NAME = "numpy"
    DISTRIBUTION = "numpy"
    METHOD = "a numpy toy under the harness's protocol (tests only)"
    DEFAULT_PRECISION = "f32"

    def runner(self, job: WorkerJob) -> Runner:
        from fleetfit.models.catalogue import architecture

        return Runner(architecture(job.target.arch), job.request.n_prompt, job.request.n_gen)

    def call(self, op: str, args: dict) -> dict:
        if op == "capabilities":
            return {"capabilities": [{"device": "cpu", "precision": "f32", "supported": True}]}
        return super().call(op, args)


BACKEND = Toy()
