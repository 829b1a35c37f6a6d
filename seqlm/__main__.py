"""``python -m seqlm`` runs the command line (torchrun starts each rank this way)."""

from seqlm.cli import main
from seqlm.distributed import exit_process

exit_process(main())
