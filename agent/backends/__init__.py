"""Inference backends: one module per backend (`*_backend.py`, listed in registry.py; imports no runtime), its
heavy runtime in `*_runtime.py`, imported only inside the isolated worker. The interface is base.py."""
