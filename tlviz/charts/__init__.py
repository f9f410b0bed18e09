"""Every Altair chart tlviz draws: pure functions of the engine's DataFrames and records.

One module per page that draws charts, one shared heatmap, one palette; pages import
the builders from here:

- ``overview`` — `class_counts` (images per class; a class-count finding draws it too).
- ``tryit`` — `top_classes_chart` (the Try page's top classes of one photo).
- ``export`` — `to_svg` (a chart as static SVG, rendered offline by vl-convert, for the HTML report).
- ``layers`` — `params_by_depth` (parameters per layer, trainable / frozen).
- ``normalization`` — `ranking_chart`, `per_class_heatmap`, `fingerprint_chart`.
- ``finetune`` — `curves_chart`, `compare_chart`, `weight_change_chart`, `drift_chart`,
  `control_chart`, `sweep_heatmap`, `lr_finder_chart` (and `history_long`).
- ``diagnose`` — what a finding card shows: `evidence_table`, `finding_chart`
  (and `comparison_frame`, `comparison_chart`).
- ``confusion`` — the one confusion-matrix heatmap, `confusion_chart` (and
  `confusion_frame`): a run's validation matrix and the label-order finding's.
- ``palette`` — the colours and words every chart uses (trainable / frozen, best
  preset, train / validation, expected / measured accuracy).

Nothing outside this package imports Altair (a test says so); a chart is tested by
inspecting its ``to_dict()`` spec.
"""

from tlviz.charts import palette
from tlviz.charts.confusion import confusion_chart, confusion_frame
from tlviz.charts.diagnose import comparison_chart, comparison_frame, evidence_table, finding_chart
from tlviz.charts.finetune import (compare_chart, control_chart, curves_chart, drift_chart, history_long,
                                   lr_finder_chart, sweep_heatmap, weight_change_chart)
from tlviz.charts.layers import params_by_depth
from tlviz.charts.normalization import fingerprint_chart, per_class_heatmap, ranking_chart
from tlviz.charts.export import to_svg
from tlviz.charts.overview import class_counts
from tlviz.charts.tryit import top_classes_chart

__all__ = [
    "palette", "class_counts", "params_by_depth", "ranking_chart", "per_class_heatmap", "fingerprint_chart",
    "history_long", "curves_chart", "compare_chart", "confusion_frame", "confusion_chart", "weight_change_chart",
    "sweep_heatmap", "lr_finder_chart", "drift_chart", "control_chart", "evidence_table", "comparison_frame", "comparison_chart", "finding_chart",
    "top_classes_chart", "to_svg",
]
