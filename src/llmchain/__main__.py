"""`python -m llmchain ...` (what `torchrun -m llmchain pretrain ...` runs)."""

import sys

from llmchain.cli import main

sys.exit(main())
