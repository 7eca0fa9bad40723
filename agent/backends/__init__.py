"""Inference backends: a cheap probe per backend, the runtime itself imported only inside its worker."""
