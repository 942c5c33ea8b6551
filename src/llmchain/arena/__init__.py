"""The arena: blind pairwise battles between models, votes in SQLite, Bradley-Terry ratings."""
