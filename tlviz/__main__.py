"""``python -m tlviz``: the command line."""

from tlviz.quiet import quiet_tensorflow

quiet_tensorflow()  # before anything imports TensorFlow: its start-up lines would reach the terminal

from tlviz.cli import main  # noqa: E402

raise SystemExit(main())
