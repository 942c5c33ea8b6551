"""Retrieval over your own documents: passages, embeddings, one SQLite index, hybrid search, evaluation."""
