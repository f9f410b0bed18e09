"""The matrix's fixed settings: seed, image size, split, the cache folder, the run-judging checks, the targets."""

from __future__ import annotations

import os
from pathlib import Path



#: The repository (this file is bench/truth/settings.py).
ROOT = Path(__file__).resolve().parents[2]
#: Bump when the data, the architectures or the training change: cached models of another version are retrained.
VERSION = "3"
SEED = 20261213
SIZE = 32
#: Share of each class kept for the diagnosis (the rest trains).
HELD_OUT = 0.4
#: The source task is every digit (10 classes); the target task is digits 5-9 (5 classes, a new head).
SOURCE_CLASSES = 10
TARGET_FIRST = 5
TARGET_CLASSES = 10 - TARGET_FIRST
#: The committed sample (tlviz.samples): trained outside the matrix on 80 % of digits 0-4 with `tf`.
SAMPLE_MODEL = ROOT / "sample_models" / "digits_base.keras"
DEFAULT_CACHE = Path(os.environ.get("TLVIZ_TRUTH_CACHE", "/tmp/tlviz_truth_matrix"))

#: The check that judges fine-tuning runs (scored on `RUN_CASE_TABLE`'s cases only).
FORGETTING = "catastrophic-forgetting"
#: Checks that judge fine-tuning runs, not a model file: scored on the fine-tuning cases, and only there.
RUN_CHECKS = (FORGETTING,)

TARGET_OVERALL = 0.95
TARGET_PER_CHECK = 0.9
