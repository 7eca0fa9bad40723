"""What both the agent and the coordinator know about models: quant types, GGUF files, real models."""
