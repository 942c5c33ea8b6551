"""The decoder transformer, its presets, HF-format I/O and GGUF export."""
