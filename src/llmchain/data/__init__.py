"""Stage 1: collection and processing of raw text into clean, deduplicated documents."""
