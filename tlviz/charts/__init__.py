"""Every Altair chart tlviz draws: pure functions of the engine's DataFrames and records.

One module per page that draws charts; pages import the builders from here:

- ``overview`` — `class_counts` (images per class).
- ``layers`` — `params_by_depth` (parameters per layer, trainable / frozen).
- ``normalization`` — `ranking_chart`, `per_class_heatmap`, `fingerprint_chart`.
- ``finetune`` — `curves_chart`, `compare_chart`, `confusion_chart`, `weight_change_chart`,
  `sweep_heatmap`, `lr_finder_chart` (and `history_long`, `confusion_frame`).
- ``diagnose`` — what a finding card shows: `evidence_table`, `finding_chart`
  (and `comparison_frame`, `comparison_chart`).

Nothing outside this package imports Altair (a test says so); a chart is tested by
inspecting its ``to_dict()`` spec.
"""

from tlviz.charts.diagnose import comparison_chart, comparison_frame, evidence_table, finding_chart
from tlviz.charts.finetune import (compare_chart, confusion_chart, confusion_frame, curves_chart, history_long,
                                   lr_finder_chart, sweep_heatmap, weight_change_chart)
from tlviz.charts.layers import params_by_depth
from tlviz.charts.normalization import fingerprint_chart, per_class_heatmap, ranking_chart
from tlviz.charts.overview import class_counts

__all__ = [
    "class_counts", "params_by_depth", "ranking_chart", "per_class_heatmap", "fingerprint_chart", "history_long",
    "curves_chart", "compare_chart", "confusion_frame", "confusion_chart", "weight_change_chart", "sweep_heatmap",
    "lr_finder_chart", "evidence_table", "comparison_frame", "comparison_chart", "finding_chart",
]
