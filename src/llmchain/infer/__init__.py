"""The one inference engine: continuous batching over a slot KV cache, sampling, C kernels (serve, chat, generate, eval)."""
