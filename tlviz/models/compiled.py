"""The loss a model file was compiled with, read from the file (tlviz loads models with ``compile=False``).

A `.keras` archive keeps it in ``config.json``'s ``compile_config``; a Keras 2 `.h5`
in the ``training_config`` attribute. Nothing is deserialized: the loss is kept as
the plain JSON the file holds (a name such as ``"sparse_categorical_crossentropy"``,
or ``{"class_name": "CategoricalCrossentropy", "config": {"from_logits": true, ...}}``),
and `load_model` records it in ``LoadedModel.metadata["saved_loss"]`` (so that it
travels with the model's metadata to the worker processes, and into a `.keras`
re-saved by tlviz). ``output-loss-mismatch`` (`tlviz.diagnose.outputs`) reads it.

Public API: `saved_loss(kind, config, data)`, `SAVED_LOSS_KEY`.
"""

from __future__ import annotations

import io
import json

#: The metadata key `load_model` records the file's loss under.
SAVED_LOSS_KEY = "saved_loss"


def _h5_training_config(data: bytes) -> dict | None:
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            raw = f.attrs.get("training_config")
    except Exception:  # noqa: BLE001 - a damaged file was refused before; no loss is then "none recorded"
        return None
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        value = json.loads(str(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def saved_loss(kind: str, config: dict | None, data: bytes | None = None):
    """The loss the file records, as the file holds it, or None.

    Args:
        kind: ``"keras"`` (a `.keras` archive: `config` is its ``config.json``) or ``"h5"``
            (`data` is the file's bytes).
        config: the archive's ``config.json``. Defaults to none.
        data: the `.h5` file's bytes. Defaults to none.

    Returns:
        The loss (a string, a dict, or a list / dict of them for several outputs), or None when
        the model was saved without ``compile()`` (or with ``include_optimizer=False``).
    """
    if kind == "keras":
        compiled = (config or {}).get("compile_config") or {}
    else:
        compiled = _h5_training_config(data) if data else None
    if not isinstance(compiled, dict):
        return None
    return compiled.get("loss")
