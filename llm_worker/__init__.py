"""The LLM worker process: journal in, Ollama tokens out, over the bus."""
