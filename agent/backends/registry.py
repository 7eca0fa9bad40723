"""Each backend of the shared vocabulary (models/backends.py) mapped to the module that implements it.

Modules are imported by path only when a backend is asked for, and import no runtime themselves: the agent and
`fleetfit-agent --help` never load torch, llama_cpp or onnxruntime; the worker does, through a backend's `run`.
Adding a backend: its entry in models/backends.py (names, precisions and their sizes, compute devices), one
module here beside the others (a Backend whose `runner` gives the harness's small runner: load, clear, prefill,
decode, N streams, describe; agent/backends/harness.py times it), and one line below. Nothing else names it
(tests/agent/test_toy_backend.py adds one that way and runs a campaign on it).
"""

import importlib

from fleetfit.agent.backends.base import Backend
from fleetfit.models import backends as vocabulary

MODULES = {
    "llama.cpp": "fleetfit.agent.backends.llama_cpp_backend",
    "torch": "fleetfit.agent.backends.torch_backend",
    "onnxruntime": "fleetfit.agent.backends.onnx_backend",
}


def get(name: str) -> Backend:
    """The backend called `name` (spelled as the vocabulary accepts it), or a ModelError listing the known ones."""
    spec = vocabulary.backend(name)
    return importlib.import_module(MODULES[spec.name]).BACKEND


def all_backends() -> list[Backend]:
    return [get(name) for name in vocabulary.BACKENDS if name in MODULES]
