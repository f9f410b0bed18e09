"""The Streamlit side shared by the pages; the engine lives in ``tlviz`` (no Streamlit there).

Modules:

- `ui.state` — session state: the current model and image set, the workspace token;
- `ui.cache` — every `st.cache_resource` / `st.cache_data` (models by content hash,
  decoded images, layer tables, content keys, stored reports); `ui.cache.remembered_key`
  is the one place a model's cache key is built;
- `ui.shell` — what the router does around every page (`page_start`, `mark_shell_drawn`);
- `ui.sidebar` — the model and image-set pickers;
- `ui.widgets` — the severity -> alert mapping and the one finding card;
- `ui.analysis` — heavy analyses in a worker process, with a polling panel;
- `ui.finetune` — the fine-tuning page's panels.

Pages ``import ui`` and use the names below, so that they only lay out.
"""

from ui import finetune
from ui.analysis import analysis
from ui.cache import remembered_key
from ui.reports import html_report_download
from ui.shell import freeze_startup_objects, mark_shell_drawn, page_start
from ui.sidebar import MODEL_UPLOAD_TYPES, sidebar
from ui.state import (DEFAULT_IMAGES, DEFAULT_MODEL, current, current_layer_table, image_source,
                      image_set_key, init_state, is_sample, pixels_key, require_images, require_model, set_image_source,
                      set_model, workspace)
from ui.widgets import ALERTS, SEVERITY_ICONS, alert, finding_card, finding_cards

__all__ = [
    "finetune", "analysis", "html_report_download", "remembered_key", "freeze_startup_objects", "mark_shell_drawn", "page_start",
    "MODEL_UPLOAD_TYPES", "sidebar", "DEFAULT_IMAGES", "DEFAULT_MODEL", "current",
    "current_layer_table", "image_source", "image_set_key", "init_state", "is_sample", "pixels_key", "require_images",
    "require_model", "set_image_source", "set_model", "workspace", "ALERTS", "SEVERITY_ICONS", "alert",
    "finding_card", "finding_cards",
]
