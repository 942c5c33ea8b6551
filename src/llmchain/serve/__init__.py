"""Serving: continuous-batching engine, sampling, OpenAI-compatible API, chat page."""
