"""``python -m tlviz.diagnose [--update docs/diagnose.md]``: print, or rewrite in place, the table of checks.

The table is generated from the registry (`tlviz.diagnose.registry.readme_table`).
Diagnosing a model is ``python -m tlviz diagnose MODEL IMAGES``.
"""

import sys

from tlviz.diagnose.registry import main

sys.exit(main())
