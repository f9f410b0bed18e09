"""Loading Keras models safely, and summarising what was loaded.

Models are always loaded with ``safe_mode=True``; there is deliberately no way
to turn that off. Before Keras sees a file, its architecture config is read and
checked so that a refusal can name the offending layer and say what to do.

Modules:

- `tlviz.models.loading` — `load_model` (a `.keras`, a Keras 2 `.h5` or a Teachable Machine
  zip; anything else named with how to convert it) and `keras_bytes`.
- `tlviz.models.safety` — what a file may hold: the size limit (`max_model_bytes`), archive
  entries, and `check_config`, the gate every architecture passes.
- `tlviz.models.summary` — `LoadedModel`, `summarize`, `builtin_preprocessing`.
- `tlviz.models.legacy` — the Keras 2 translator: the architecture rewritten as data (`translate`).
- `tlviz.models.h5` — Keras 2 `.h5` files: the translated model built, the weights copied.
- `tlviz.models.teachable` — Teachable Machine export zips and `is_teachable_machine`.
- `tlviz.models.messages` — names quoted safely (`clean`), sizes, answers for other formats.

Everything public is imported from this package (``from tlviz.models import load_model``).
"""

from tlviz.models.legacy import Translation, translate
from tlviz.models.loading import keras_bytes, load_model
from tlviz.models.safety import DEFAULT_MAX_MODEL_MB, EMBEDDED_METADATA, check_config, max_model_bytes
from tlviz.models.summary import LoadedModel, builtin_preprocessing, summarize
from tlviz.models.teachable import is_teachable_machine

__all__ = [
    "DEFAULT_MAX_MODEL_MB", "EMBEDDED_METADATA", "LoadedModel", "Translation",
    "builtin_preprocessing", "check_config", "is_teachable_machine", "keras_bytes", "load_model",
    "max_model_bytes", "summarize", "translate",
]
