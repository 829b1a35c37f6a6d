"""``python -m seqlm`` runs the command line (torchrun starts each rank this way)."""

import sys

from seqlm.cli import main

code = main()
# a rank that left a process group ends its own way; seqlm.distributed (and torch) is
# imported only by the commands that need it, so ``--help`` and ONNX runs stay torch-free
distributed = sys.modules.get("seqlm.distributed")
if distributed is not None:
    distributed.exit_process(code)
sys.exit(code)
