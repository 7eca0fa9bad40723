"""fleetfit-agent: runs on each device, profiles quantized inference and reports to a coordinator."""
