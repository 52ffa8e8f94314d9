"""`python -m llm_adapters ...` is the CLI, so that `torchrun ... -m llm_adapters finetune ...` works."""
import sys

from llm_adapters.cli import main

sys.exit(main())
