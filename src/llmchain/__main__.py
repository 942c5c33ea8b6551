"""`python -m llmchain ...` (what `torchrun -m llmchain pretrain ...` runs)."""

import sys

from llmchain.cli import main

if __name__ == "__main__":  # not when a spawned process (the serve engine's) imports it
    sys.exit(main())
