"""Explanations: token attributions for classifiers and language models, faithfulness, HTML heatmaps."""
