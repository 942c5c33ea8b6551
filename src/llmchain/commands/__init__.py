"""Thin CLI modules, one per stage. Each has `register(app)`; `llmchain.cli` calls it.

Split per stage (rather than one big cli.py) so every module stays small and each stage's flags sit
in one place.
"""
