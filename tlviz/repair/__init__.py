"""Repair: turn a fixable finding into a repaired copy of the model, measured before and after on the user's images.

Diagnose (`tlviz.diagnose`) names the cause; for these findings tlviz makes the change itself, on
a copy (the loaded model never changes), and proves it:

{repairs}

Every repaired model is a plain Keras model: only built-in layers are added (`Rescaling`, and for
``caffe`` a fixed 1x1 `Conv2D` that flips RGB to BGR; never `Lambda`), so the `.keras` file loads
with ``keras.models.load_model(path, safe_mode=True)`` in any Keras 3 session, without tlviz, and
predicts what it predicts inside tlviz. What tlviz recorded about it (the preset it takes, its
class names, the repairs applied) is embedded in the file (``tlviz.json``).

Repairs combine; they are applied in a fixed order (`ORDER`, explained by `ORDER_NOTE`). Anything
estimated from the images (the preset the model expects, the class order, the BatchNormalization
statistics) is estimated on one seeded half of the images and measured on the other half; each
step reports how many images each side had (``n_fit``, ``n_eval``) and the 95 % paired interval of
its gain (`tlviz.stats.paired_difference`).

Modules
-------

- `runner`: `repair`, `check_fixes`, `repair_params`, `ORDER`, `REPAIRS`, `ORDER_NOTE`.
- `result`: `RepairResult`, `RepairStep`, `repairs_markdown` (the diagnosis report's section).
- `chain`: `Chain` (the copy, its feed, the two halves), `split_halves`.
- `preprocessing` (``normalization-mismatch``, ``double-normalization``), `labels`
  (``label-order-mismatch``), `adabn` (``bn-statistics-mismatch``), `freezing`
  (``no-trainable-weights``, ``head-frozen``): one module per repair.
- `affine`: presets and input layers as per-channel affine maps, and the layers that compute them.
- `graph`: model surgery on the config (copy, prepend layers, remove layers, the output Dense layer).

Public API
----------

- `repair(loaded, images, fixes, inference_preset="unit", *, target="raw",
  double_normalization="drop-layer", top_block=False, progress=None) -> RepairResult`.
- `RepairResult`: ``steps``, ``overall``, ``split``, ``feed_preset``, ``model_bytes``,
  ``filename``, ``metadata``; ``to_json(model_path)`` (the command line's object
  ``{"applied": [{"id", "before", "after", "n_fit", "n_eval", ...}], "model_path"}``),
  ``to_markdown()``, ``summary()``.
- `check_fixes(fixes)`, `repair_params(params)`, `repairs_markdown(results)`, `fixable(finding_ids)`.
- `RepairRefused` (a `TlvizError`, from `tlviz.errors`): an unknown repair, or one that does not apply.
"""

from tlviz.errors import RepairRefused
from tlviz.repair.preprocessing import DOUBLE_VARIANTS, TARGETS
from tlviz.repair.result import RepairResult, RepairStep, repairs_markdown
from tlviz.repair.runner import DEFAULTS, ESTIMATING, ORDER, ORDER_NOTE, REPAIRS, check_fixes, repair, repair_params


def fixable(finding_ids) -> list[str]:
    """The ids among `finding_ids` that have a repair, in the order a chain applies them."""
    ids = set(finding_ids)
    return [i for i in ORDER if i in ids]


if __doc__:  # None under ``python -OO``
    __doc__ = __doc__.replace("{repairs}", "\n".join(f"- ``{i}``: {REPAIRS[i]}." for i in ORDER))

__all__ = [
    "DEFAULTS", "DOUBLE_VARIANTS", "ESTIMATING", "ORDER", "ORDER_NOTE", "REPAIRS", "TARGETS", "RepairRefused",
    "RepairResult", "RepairStep", "check_fixes", "fixable", "repair", "repair_params", "repairs_markdown",
]
