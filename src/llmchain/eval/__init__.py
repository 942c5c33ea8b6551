"""Evaluation: LM metrics, classification and generation metrics, classical baselines, reports."""
