"""The one training loop and what feeds it: pretraining, SFT (full and LoRA), classification."""
