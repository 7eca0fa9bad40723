"""The coordinator's predictions: per device scaling (memory, decode and prefill) and speed models, serving curves
over concurrent streams, fleet priors for a device with only its probes, and GPU offload splits. Functions of
results and inventories only: predict/ imports neither service/ nor answers/ (tests/test_layers.py)."""
