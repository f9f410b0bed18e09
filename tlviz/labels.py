"""`labels.txt`: class names in a model's output order.

Two spellings are read:

- one class name per line (``cats``), the `image_dataset_from_directory` convention;
- Teachable Machine's ``0 cats`` (the output index, a space, the name): used when every
  non-empty line starts with an index and the indices are exactly ``0 .. n-1``; the names are
  then put in index order.
"""

from __future__ import annotations

import re
import unicodedata

_INDEXED = re.compile(r"^\s*(\d+)\s+(\S.*?)\s*$")


def parse_labels(text: str) -> list[str]:
    """Class names from the text of a `labels.txt`, in output order (NFC-normalized, stripped).

    Args:
        text: the file's text.

    Returns:
        The names; empty lines are ignored.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    matches = [_INDEXED.match(ln) for ln in lines]
    if lines and all(matches):
        indices = [int(m.group(1)) for m in matches]
        if sorted(indices) == list(range(len(lines))):
            names = dict(zip(indices, (m.group(2) for m in matches)))
            lines = [names[i] for i in range(len(lines))]
    return [unicodedata.normalize("NFC", ln) for ln in lines]


def is_indexed(text: str) -> bool:
    """Whether `text` uses Teachable Machine's ``0 name`` spelling."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    matches = [_INDEXED.match(ln) for ln in lines]
    return bool(lines) and all(matches) and sorted(int(m.group(1)) for m in matches) == list(range(len(lines)))
