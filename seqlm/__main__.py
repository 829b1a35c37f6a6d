"""``python -m seqlm`` runs the command line."""

from seqlm.cli import main

raise SystemExit(main())
