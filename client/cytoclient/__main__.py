"""``python -m cytoclient``: the ``cyto`` command line."""

from cytoclient.cli import main

raise SystemExit(main())
