class ModelError(Exception):
    """A model name, quant name or model file that fleetfit cannot use; the message is one line for users."""
