"""``python -m tlviz``: the command line."""

from tlviz.cli import main

raise SystemExit(main())
