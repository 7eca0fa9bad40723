class ModelError(Exception):
    """A model name, quant name or model file that fleetfit cannot use; the message is one line for users."""


class NoRoomError(ModelError, MemoryError):
    """Too little memory for a model, found before loading it: a ModelError to the user at a terminal, and a
    MemoryError to a worker, which reports it as out of memory (a job's result says "does not fit", not "error")."""
