"""Serving over HTTP: the OpenAI-compatible API, the engine process, metrics, the chat page (the engine is llmchain.infer)."""
