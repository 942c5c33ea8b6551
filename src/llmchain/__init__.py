"""llmchain: the whole value chain of a language model in one package."""

__version__ = "0.1.0"
