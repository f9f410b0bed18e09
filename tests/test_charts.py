"""tlviz.charts: one palette and one vocabulary on every page, one confusion heatmap; specs inspected, no browser.

Charts drawn from a real measurement are tested beside it (test_normalize.py, test_diagnose.py,
test_finetune.py); these use small hand-made frames.
"""

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tlviz import charts
from tlviz.charts import palette
from tlviz.findings import Finding

CHARTS_DIR = Path(charts.__file__).resolve().parent


def _layer_table() -> pd.DataFrame:
    return pd.DataFrame({
        "depth": [0, 1, 2, 3], "path": ["in", "base/conv", "base/bn", "head"], "class": ["InputLayer", "Conv2D",
                                                                                      "BatchNormalization", "Dense"],
        "role": ["input", "base", "base", "head"], "holds_weights": [False, True, True, True],
        "trainable_params": [0, 0, 0, 50], "non_trainable_params": [0, 80, 8, 0],
        "trainable": [False, False, False, True], "would_train": [False, True, False, True],
    })


def _values(spec: dict, layer: dict | None = None) -> list[dict]:
    name = (layer or spec).get("data", {}).get("name")
    return spec["datasets"][name] if name else next(iter(spec["datasets"].values()))


def _history(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(1, n + 1), "phase": "main", "loss": [1.0, 0.8, 0.7][:n],
                         "accuracy": [0.4, 0.6, 0.7][:n], "val_loss": [1.1, 0.9, 0.8][:n],
                         "val_accuracy": [0.3, 0.5, 0.6][:n]})


def _finding(id_: str, **evidence) -> Finding:
    return Finding(id_, "warning", "inference", "a title", evidence, "the fix")


def test_trainable_and_frozen_look_the_same_on_the_layer_and_weight_change_charts():
    table = _layer_table()
    layer_spec = charts.params_by_depth(table).to_dict()
    rows = _values(layer_spec)
    assert [r["path"] for r in rows] == ["base/conv", "base/bn", "head"]  # no weights, no bar
    assert [r["status"] for r in rows] == [palette.FROZEN, palette.FROZEN, palette.TRAINABLE]
    preview = _values(charts.params_by_depth(table, "would_train").to_dict())
    assert [r["status"] for r in preview] == [palette.TRAINABLE, palette.FROZEN, palette.TRAINABLE]
    with pytest.raises(ValueError, match="would_train"):
        charts.params_by_depth(table, "trained")

    report = pd.DataFrame({"path": ["base/conv", "head"], "class": ["Conv2D", "Dense"], "trainable": [False, True],
                           "rel_change": [0.0, np.inf], "params": [80, 50]})
    change_spec = charts.weight_change_chart(report).to_dict()
    assert [r["status"] for r in _values(change_spec)] == [palette.FROZEN, palette.TRAINABLE]
    for spec in (layer_spec, change_spec):
        scale = spec["encoding"]["color"]["scale"]
        assert scale == {"domain": [palette.TRAINABLE, palette.FROZEN],
                         "range": [palette.TRAINABLE_COLOR, palette.FROZEN_COLOR]}


def test_one_confusion_heatmap_for_a_run_and_for_a_label_order_finding():
    matrix = np.array([[0, 9, 1], [0, 0, 10], [8, 0, 0]])
    names = ["cat", "dog", "fox"]
    frame = charts.confusion_frame(matrix, names, {"cat": 1, "dog": 2, "fox": 0})
    assert list(frame.columns) == ["true", "predicted", "count", "share", "matched"]
    assert frame["count"].sum() == matrix.sum()
    assert frame.loc[(frame["true"] == "cat") & (frame["predicted"] == "dog"), "share"].item() == pytest.approx(0.9)
    assert set(zip(frame[frame["matched"]]["true"], frame[frame["matched"]]["predicted"])) == \
        {("cat", "dog"), ("dog", "fox"), ("fox", "cat")}

    run = charts.confusion_chart(matrix, names).to_dict()
    finding = _finding("label-order-mismatch", confusion_matrix=matrix.tolist(), classes=names,
                       mapping={"cat": 1, "dog": 2, "fox": 0}, accuracy=0.0, accuracy_with_mapping=0.9)
    card = charts.finding_chart(finding).to_dict()
    for spec in (run, card):
        cells, counts = spec["layer"][:2]
        assert cells["mark"]["type"] == "rect" and cells["encoding"]["color"]["field"] == "share"
        assert cells["encoding"]["color"]["scale"] == {"domain": [0, 1], "scheme": palette.SEQUENTIAL_SCHEME}
        assert counts["encoding"]["text"]["field"] == "count"
        assert cells["encoding"]["x"]["sort"] == names and cells["encoding"]["y"]["sort"] == names
    assert len(run["layer"]) == 2 and run["title"] == "validation confusion matrix"
    outline = card["layer"][2]
    assert outline["mark"]["stroke"] == palette.FLAG_COLOR and outline["mark"]["fillOpacity"] == 0
    assert card["title"] == "Predictions vs labels"
    assert card["layer"][0]["encoding"]["x"]["title"] == "model output"


def test_images_per_class_is_one_chart_with_the_findings_classes_flagged():
    counts = {"cat": 40, "dog": 5, "fox": 30}
    overview = charts.class_counts(counts).to_dict()
    assert [r["flagged"] for r in _values(overview)] == [False, False, False]
    assert "title" not in overview
    card = charts.finding_chart(_finding("class-imbalance", counts=counts, largest="cat", smallest="dog", ratio=8.0))
    spec = card.to_dict()
    assert spec["mark"]["type"] == "bar" and spec["title"] == "Images per class"
    assert [r["class"] for r in _values(spec) if r["flagged"]] == ["cat", "dog"]
    assert spec["encoding"]["color"]["scale"]["range"] == [palette.FLAG_COLOR, palette.BLUE]
    few = charts.finding_chart(_finding("too-few-images", counts=counts, classes_below={"dog": 5})).to_dict()
    assert [r["class"] for r in _values(few) if r["flagged"]] == ["dog"]


def test_compared_accuracies_are_coloured_by_role():
    f = _finding("normalization-mismatch", accuracy_by_preset={"tf": 0.9, "unit": 0.3, "raw": 0.2},
                 expected_preset="tf", inference_preset="unit")
    frame = charts.comparison_frame(f)
    assert list(frame["role"]) == [palette.EXPECTED, palette.MEASURED, palette.OTHER]
    bars = charts.finding_chart(f).to_dict()["layer"][0]
    assert bars["encoding"]["color"]["scale"] == {"domain": list(palette.ROLE_COLORS),
                                                  "range": list(palette.ROLE_COLORS.values())}


def test_train_and_validation_curves_use_the_palette_words_and_colours():
    long = charts.history_long(_history())
    assert set(long["split"]) == {palette.TRAIN, palette.VALIDATION}
    spec = charts.curves_chart(_history()).to_dict()
    for panel in spec["hconcat"]:
        assert panel["encoding"]["color"]["scale"] == {"domain": [palette.TRAIN, palette.VALIDATION],
                                                       "range": [palette.SPLIT_COLORS[palette.TRAIN],
                                                                 palette.SPLIT_COLORS[palette.VALIDATION]]}
    comp = charts.compare_chart({"a": _history(), "b": _history(2)}).to_dict()
    assert comp["hconcat"][0]["encoding"]["color"]["scale"]["range"] == palette.CATEGORY_COLORS
    assert comp["hconcat"][0]["encoding"]["strokeDash"]["field"] == "split"


def test_reference_lines_and_heatmaps_share_their_look():
    results = pd.DataFrame({"rank": [1, 2], "setting": ["tf", "unit"], "kind": ["preset", "preset"],
                            "is_best": [True, False], "n": [50, 50], "accuracy": [0.9, 0.4],
                            "accuracy_low": [0.8, 0.3], "accuracy_high": [0.95, 0.5]})
    ranking = charts.ranking_chart(results, chance=0.2).to_dict()
    bars, whisker, _, chance = ranking["layer"]
    assert bars["encoding"]["color"]["scale"]["range"] == [palette.BEST_COLOR, palette.OTHER_COLOR]
    assert whisker["mark"]["color"] == palette.INK
    lrs = np.logspace(-6, 0, 20)
    curve = pd.DataFrame({"lr": lrs, "loss": np.linspace(2, 1, 20), "smoothed": np.linspace(2, 1, 20)})
    lr_spec = charts.lr_finder_chart(curve, 1e-3).to_dict()
    suggestion = lr_spec["layer"][-1]
    assert "dashed line: suggested rate" in lr_spec["title"]
    for rule in (chance, suggestion):
        assert rule["mark"]["color"] == palette.REFERENCE_COLOR and rule["mark"]["strokeDash"] == palette.REFERENCE_DASH

    sweep = pd.DataFrame({"unfreeze": [0, 2], "lr": [1e-3, 1e-3], "state": ["completed", "queued"],
                          "best_val_accuracy": [0.7, None], "run_id": ["a", "b"]})
    per_class = pd.DataFrame({"preset": ["tf", "tf"], "class": [0, 1], "accuracy": [0.9, 0.5], "n": [5, 5]})
    for spec in (charts.sweep_heatmap(sweep).to_dict(), charts.per_class_heatmap(per_class).to_dict()):
        rect, text = spec["layer"]
        assert rect["encoding"]["color"]["scale"] == {"domain": [0, 1], "scheme": palette.SEQUENTIAL_SCHEME}
        colour = text["encoding"]["color"]
        assert (colour["condition"]["value"], colour["value"]) == (palette.TEXT_ON_DARK, palette.TEXT_ON_LIGHT)


_HEX = re.compile(r"^#[0-9a-fA-F]{3,8}$")
_COLOUR_ARGS = {"color", "fill", "stroke", "scheme", "range"}


def test_no_chart_module_writes_a_colour_of_its_own():
    """Colours are named in `palette` only: no hex string, no literal colour argument, no ``alt.value("red")``."""
    offenders = []
    for path in sorted(CHARTS_DIR.glob("*.py")):
        if path.name == "palette.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _HEX.match(node.value):
                offenders.append(f"{where} {node.value}")
            elif isinstance(node, ast.keyword) and node.arg in _COLOUR_ARGS and isinstance(node.value, ast.Constant):
                offenders.append(f"{where} {node.arg}={node.value.value!r}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "value"
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                offenders.append(f"{where} alt.value({node.args[0].value!r})")
    assert offenders == []


def test_the_palette_is_one_set_of_distinct_colours_by_meaning():
    named = [palette.TRAINABLE_COLOR, palette.FROZEN_COLOR]
    assert len(set(named)) == 2 and palette.BEST_COLOR == palette.TRAINABLE_COLOR  # blue: the part that works
    assert palette.FROZEN_COLOR == palette.OTHER_COLOR  # grey: everything else
    assert len(set(palette.ROLE_COLORS.values())) == 3 and len(set(palette.SPLIT_COLORS.values())) == 2
    assert len(set(palette.CATEGORY_COLORS)) == len(palette.CATEGORY_COLORS)
    assert all(_HEX.match(c) for c in palette.CATEGORY_COLORS + [palette.FLAG_COLOR, palette.REFERENCE_COLOR])


def test_drift_chart_outlines_blocks_it_could_not_measure():
    drift = pd.DataFrame({"block": ["block_1", "block_2", "Conv_1"], "cka": [1.0, 0.42, None],
                          "status": ["unchanged", "trained", "trained"], "layers": [3, 3, 1]})
    spec = charts.drift_chart(drift, 0.5).to_dict()
    outline = [layer for layer in spec["layer"] if isinstance(layer.get("mark"), dict)
               and layer["mark"].get("fillOpacity") == 0]
    assert len(outline) == 1
    rows = spec["datasets"][outline[0]["data"]["name"]]
    assert [r["block"] for r in rows] == ["Conv_1"] and rows[0]["top"] == 1.0 and rows[0]["value"] == "not measured"
    assert spec["autosize"] == {"type": "fit-x", "contains": "padding"}


def test_evidence_reads_as_people_write_numbers():
    """The evidence table writes shares as percentages, intervals as ranges, differences in points, counts with
    separators and files by name (issue 24: it showed ``interval 0.2686, 0.405`` beside "26.9–40.5 %")."""
    from tlviz.charts import evidence_table
    from tlviz.evidence import evidence_text
    from tlviz.stats import PairedDifference

    ev = {"interval": [0.2686, 0.405], "margin": 0.1, "probe_interval": [0.9174, 0.987], "drop": 0.192,
          "drop_interval": [0.1662, 0.2178], "non_trainable_params": 24245, "n_images": 901,
          "accuracy_by_preset": {"tf": 0.394, "unit": 0.2}, "fingerprint_distance": 0.0423, "file": "cats/sub/a.png",
          "seconds": 12345.6, "at_chance": True, "preset": "tf", "missing": None,
          "example_files": ["x.png"], "confusion_matrix": [[1, 0], [0, 1]]}
    table = dict(zip(*evidence_table(ev).to_dict("list").values()))
    assert table == {
        "interval": "26.9–40.5 %", "margin": "+10.0 points", "probe interval": "91.7–98.7 %",
        "drop": "+19.2 points", "drop interval": "+16.6 to +21.8 points", "non trainable params": "24,245",
        "n images": "901", "accuracy by preset": "tf: 39.4%, unit: 20.0%", "fingerprint distance": "0.0423",
        "file": "a.png", "seconds": "12,346", "at chance": "yes", "preset": "tf", "missing": "—"}
    d = PairedDifference(difference=0.12, low=0.05, high=0.2, n=100, only_a=15, only_b=3, accuracy_a=0.6,
                         accuracy_b=0.48)
    assert evidence_text("excess", d) == "+12.0 points (+5.0 to +20.0 points)"
    assert evidence_text("files", [f"f{i}.png" for i in range(12)]).endswith("… (12 in all)")
    assert evidence_text("accuracy", 1) == "1"  # a count-like integer stays a count, never "100.0%"


def test_run_comparison_fits_the_page_column_with_long_run_labels():
    """The comparison's legends list one run per line under the panels: four runs' long labels in one row made
    the drawn chart 1,542 px wide, past the main column (940 px at a 1400 px window)."""
    from tlviz.charts.export import to_svg

    h = pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.8], "accuracy": [0.5, 0.6], "val_loss": [1.1, 0.9],
                      "val_accuracy": [0.4, 0.5], "phase": ["main", "main"]})
    names = [f"2026-12-07 17:5{i} · depth {i} · lr 1e-0{i} · Adam · batch 32 · a long label of run {i}"
             for i in range(4)]
    svg = to_svg(charts.compare_chart({n: h for n in names}))
    width = float(re.search(r'<svg[^>]*width="([\d.]+)"', svg).group(1))
    assert width <= 940, width
