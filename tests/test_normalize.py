"""The normalization check: engine, command line and chart specs, on the committed samples."""

from __future__ import annotations

import json
import os
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tlviz import normalize as nz
from tlviz.normalize import inference, labelfree
from tlviz.normalize.ranking import agreement_note, ranked_table
from tlviz import charts
from tlviz.outputs import top_class
from tlviz.presets import CustomPreset, applicable_presets

PRESETS = applicable_presets(3)  # the presets compared by default

ROOT = Path(__file__).resolve().parent.parent


# -- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_source(digits_0_4):
    from tlviz.imagesets import open_source

    return open_source(digits_0_4)


@pytest.fixture(scope="module")
def base_report(loaded_base, base_images, base_source):
    return nz.analyze(loaded_base, base_images, source=base_source)


@pytest.fixture(scope="module")
def other_images(loaded_base, digits_5_9):
    from tlviz.imagesets import load_image_set

    return load_image_set(digits_5_9, loaded_base.image_size, loaded_base.channels)


def _tiny_model(bn: bool = False, outputs: int = 5, softmax: bool = True, name: str = "tiny"):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    if bn:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(outputs, activation="softmax" if softmax else None)(x)
    return keras.Model(inp, out, name=name)


@pytest.fixture(scope="module")
def rescaling_model(loaded_base):
    """The sample base model with its `tf` normalization moved inside as a Rescaling layer."""
    import keras

    from tlviz.models import summarize

    wrapped = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1.0),
                                loaded_base.model], name="with_rescaling")
    return summarize(wrapped, metadata=loaded_base.metadata)


# -- the sample base model ----------------------------------------------------------

def test_sample_model_ranks_tf_first_by_accuracy_and_by_fingerprint(base_report):
    assert base_report.accuracy_available
    assert base_report.best_preset == "tf"
    assert base_report.best_by == "accuracy"
    assert base_report.best_named_preset == "tf"
    assert base_report.results["preset"].iloc[0] == "tf"
    assert base_report.accuracy["tf"] >= 0.97
    assert base_report.fingerprint.best == "tf"
    assert base_report.fingerprint.layer == "block1_bn"
    assert base_report.fingerprint_order[0] == "tf"
    assert "agrees" in base_report.agreement_note


def test_fingerprint_alone_is_cheap_and_ranks_tf_first(loaded_base, base_images):
    fp = nz.fingerprint(loaded_base, base_images)
    assert fp.best == "tf"
    assert list(fp.ranking.columns) == nz.FINGERPRINT_COLUMNS
    assert set(fp.ranking["preset"]) == set(PRESETS)
    assert fp.n_images == nz.DEFAULT_FINGERPRINT_IMAGES
    assert fp.ranking["distance"].is_monotonic_increasing
    # Raw pixels are ~127x the trained scale: far away; tf matches closely.
    dist = dict(zip(fp.ranking["preset"], fp.ranking["distance"]))
    assert dist["tf"] < 0.05 < 100 < dist["raw"]
    # Works on a bare uint8 array too (no labels at all).
    assert nz.fingerprint(loaded_base.model, base_images.images[:64]).best == "tf"


def test_results_table_is_ranked_with_all_variants(base_report, base_images):
    res = base_report.results
    assert list(res.columns) == nz.RESULT_COLUMNS
    assert list(res["rank"]) == list(range(1, len(res) + 1))
    assert res["accuracy"].is_monotonic_decreasing
    assert res["is_best"].tolist() == [True] + [False] * (len(res) - 1)
    assert res["agreement"].iloc[0] == 1.0
    assert (res["n"] == len(base_images)).all()
    assert set(res[res["kind"] == "preset"]["preset"]) == set(PRESETS)
    assert sorted(res[res["kind"] == "resize"]["resize"]) == ["area", "crop", "nearest"]
    assert (res[res["kind"] != "preset"]["preset"] == "tf").all()  # variants vary the best preset
    bgr = res[res["kind"] == "channel order"].iloc[0]
    assert bgr["setting"] == "tf · BGR" and bgr["accuracy"] < 0.6  # the warm-on-blue digits need RGB
    # The fingerprint distance is given for the presets only.
    assert res[res["kind"] == "preset"]["fingerprint_distance"].notna().all()
    assert res[res["kind"] != "preset"]["fingerprint_distance"].isna().all()


def test_per_class_accuracy_per_preset(base_report, base_images):
    pc = base_report.per_class
    assert list(pc.columns) == nz.PER_CLASS_COLUMNS
    assert len(pc) == len(PRESETS) * 5
    for preset, rows in pc.groupby("preset"):
        assert rows["n"].sum() == len(base_images)
    tf = pc[pc["preset"] == "tf"]
    assert (tf["accuracy"] >= 0.9).all()
    assert sorted(tf["class"]) == ["0", "1", "2", "3", "4"]


def test_evaluate_preset_matches_the_report(loaded_base, base_images, base_report):
    ev = nz.evaluate_preset(loaded_base, base_images, "unit", batch_size=100)
    assert ev.accuracy == pytest.approx(base_report.accuracy["unit"])
    np.testing.assert_array_equal(ev.predictions, base_report.predictions["unit"])
    assert ev.predictions.dtype == np.int32 and ev.confidence.dtype == np.float32
    assert ((ev.confidence > 0) & (ev.confidence <= 1)).all()
    assert ev.n == len(base_images)


def test_presets_are_applied_batch_by_batch(loaded_base, base_images, monkeypatch):
    """Never a float copy of the whole set: every normalized array is one batch."""
    seen = []
    real = nz.apply_preset

    def spy(images, preset):
        seen.append(len(images))
        return real(images, preset)

    monkeypatch.setattr(inference, "apply_preset", spy)  # where the batches are normalized
    monkeypatch.setattr(labelfree, "apply_preset", spy)  # and the fingerprint's sample
    nz.evaluate_preset(loaded_base, base_images, "tf", batch_size=64)
    assert max(seen) == 64
    assert sum(seen) == len(base_images)
    seen.clear()
    nz.fingerprint(loaded_base, base_images, presets=["tf"], batch_size=64)
    assert max(seen) == 64


def test_changed_predictions_gallery_data(base_report):
    ch = nz.changed_predictions(base_report, "tf", "unit")
    assert list(ch.columns) == nz.CHANGE_COLUMNS
    pa, pb = base_report.predictions["tf"], base_report.predictions["unit"]
    assert len(ch) == int(np.sum(pa != pb)) > 0
    assert (pa[ch["index"]] != pb[ch["index"]]).all()
    # Right under the best preset and wrong under the inference preset come first.
    assert bool(ch["correct_a"].iloc[0]) and not bool(ch["correct_b"].iloc[0])
    assert len(nz.changed_predictions(base_report, "tf", "unit", limit=5)) == 5
    assert nz.changed_predictions(base_report, "tf", "tf").empty
    with pytest.raises(ValueError, match="not evaluated"):
        nz.changed_predictions(base_report, "tf", "nonsense")


def test_findings_for_the_inference_preset(base_report):
    ids = {f.id: f for f in nz.normalization_findings(base_report, "unit")}
    assert ids["preset-mismatch"].severity == "error"
    assert "x / 127.5 - 1.0" in ids["preset-mismatch"].fix
    assert "channel-order-sensitive" in ids
    assert "double-normalization" not in ids
    assert "preset-mismatch" not in {f.id for f in nz.normalization_findings(base_report, "tf")}
    assert nz.double_normalization(base_report, "unit") is None


def test_snippet_prepares_an_image_exactly_like_the_winner(base_report, base_images, tmp_path):
    from PIL import Image

    code = base_report.snippet()
    assert "x / 127.5 - 1.0" in code
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - our own generated snippet
    path = tmp_path / "one.png"
    Image.fromarray(base_images.images[0]).save(path)
    np.testing.assert_allclose(scope["prepare"](path)[0], nz.apply_preset(base_images.images[0], "tf"), atol=1e-6)


def test_json_object_shape(base_report):
    obj = base_report.to_json()
    assert set(obj) == {"results", "best", "inconclusive", "chance", "fingerprint", "builtin_preprocessing"}
    assert [set(r) for r in obj["results"]] == [{"preset", "accuracy", "interval", "mean_confidence", "n"}] * len(PRESETS)
    accs = [r["accuracy"] for r in obj["results"]]
    assert accs == sorted(accs, reverse=True)
    assert obj["best"] == "tf" and obj["results"][0]["preset"] == "tf"
    assert [set(f) for f in obj["fingerprint"]] == [{"preset", "distance"}] * len(PRESETS)
    assert obj["fingerprint"][0]["preset"] == "tf"
    assert obj["builtin_preprocessing"] == []
    json.dumps(obj)  # serialisable


# -- built-in preprocessing, no BN, mismatched classes -----------------------------------

def test_model_with_rescaling_inside_expects_raw_pixels(rescaling_model, base_images):
    report = nz.analyze(rescaling_model, base_images, variants=False)
    assert report.expects_raw_pixels
    assert report.builtin_preprocessing and report.builtin_preprocessing[0].startswith("Rescaling")
    assert report.best_preset == "raw"
    assert report.fingerprint.best == "raw"  # the fingerprint runs through the Rescaling layer
    assert report.fingerprint.layer.endswith("block1_bn")
    assert report.to_json()["builtin_preprocessing"] == report.builtin_preprocessing
    message = nz.double_normalization(report, "unit")
    assert "Double normalization" in message and "raw 0-255 pixels" in message
    assert nz.double_normalization(report, "raw") is None
    ids = [f.id for f in nz.normalization_findings(report, "tf")]
    assert ids[0] == "double-normalization"


def test_rescaling_inside_but_trained_on_normalized_images_is_not_double_normalization(loaded_base, base_images):
    """Measurements beat the layer list: here the Rescaling layer is an identity and `tf` still wins."""
    import keras

    from tlviz.models import summarize

    wrapped = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1.0), loaded_base.model],
                               name="identity_rescaling")
    report = nz.analyze(summarize(wrapped, metadata=loaded_base.metadata), base_images, variants=False)
    assert report.expects_raw_pixels and report.best_preset == "tf"
    assert nz.double_normalization(report, "tf") is None
    ids = [f.id for f in nz.normalization_findings(report, "unit")]
    assert "double-normalization" not in ids and "preset-mismatch" in ids


def test_model_without_batchnorm_has_no_fingerprint(base_images):
    model = _tiny_model(bn=False, name="no_bn")
    fp = nz.fingerprint(model, base_images)
    assert fp.ranking is None and fp.best is None and fp.order is None
    assert "has no BatchNormalization layer" in fp.reason
    report = nz.analyze(model, base_images, variants=False)
    assert report.to_json()["fingerprint"] is None
    assert report.best_by is None  # untrained: at chance under every preset (see the inconclusive tests)


def test_untrained_head_is_inconclusive_and_names_no_best(base_images):
    """All presets at chance: no "best", the sentence says what that points to, no variants are run."""
    report = nz.analyze(_tiny_model(bn=False, name="untrained"), base_images)
    assert report.accuracy_available
    assert report.best_preset is None and report.best_by is None and report.best_setting is None
    assert report.best_named_preset is None
    assert not report.results["is_best"].any()
    assert set(report.results["kind"]) == {"preset"}  # no resize / channel-order variants against "no best"
    assert report.chance == pytest.approx(np.bincount(base_images.labels).max() / len(base_images))
    # every preset's interval reaches down to chance
    assert (report.results["accuracy_low"] <= report.chance).all()
    assert "better than chance" in report.inconclusive and "head not trained" in report.inconclusive
    assert f"these {len(base_images)} images" in report.inconclusive
    obj = report.to_json()
    assert obj["best"] is None and obj["inconclusive"] == report.inconclusive
    assert all(len(r["interval"]) == 2 and r["interval"][0] <= r["accuracy"] <= r["interval"][1]
               for r in obj["results"])
    assert nz.normalization_findings(report, "unit") == []


def test_trained_model_is_conclusive_with_intervals(base_report):
    assert base_report.inconclusive is None
    top = base_report.results.iloc[0]
    assert top["accuracy_low"] > base_report.chance
    assert top["accuracy_low"] <= top["accuracy"] <= top["accuracy_high"]


def test_untrained_batchnorm_gives_no_fingerprint(base_images):
    fp = nz.fingerprint(_tiny_model(bn=True), base_images)
    assert fp.ranking is None and fp.layer == "bn"
    assert "initial statistics" in fp.reason


def test_mismatched_classes_hide_accuracy_but_keep_the_fingerprint(loaded_base, other_images):
    report = nz.analyze(loaded_base, other_images, variants=False)
    assert not report.accuracy_available
    assert "not the classes recorded with the model" in report.accuracy_note
    assert report.results["accuracy"].isna().all()
    assert report.per_class.empty
    assert report.best_by == "fingerprint" and report.best_preset == "tf"
    assert report.results["preset"].iloc[0] == "tf"  # presets follow the fingerprint order
    assert all(r["accuracy"] is None for r in report.to_json()["results"])
    assert "fingerprint alone" in report.agreement_note
    ch = nz.changed_predictions(report, "tf", "unit")
    assert ch["label"].isna().all()


def test_label_match_by_count_and_by_recorded_names(loaded_base, base_images):
    from tlviz.models import summarize

    three = nz.label_match(_tiny_model(outputs=3), base_images)
    assert three.labels is None
    assert "5 classes but the model has 3 outputs" in three.reason
    same = nz.label_match(_tiny_model(outputs=5), base_images)
    np.testing.assert_array_equal(same.labels, base_images.labels)
    assert same.output_names == ["0", "1", "2", "3", "4"]
    reversed_names = summarize(loaded_base.model, metadata={"class_names": ["4", "3", "2", "1", "0"]})
    m = nz.label_match(reversed_names, base_images)
    assert m.remapped and m.reason is None
    np.testing.assert_array_equal(m.labels, 4 - base_images.labels)


def test_logits_and_binary_outputs_become_probabilities():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    pred, conf = top_class(probs)
    assert pred.tolist() == [1, 0] and conf == pytest.approx([0.7, 0.5])
    pred, conf = top_class(np.array([[2.0, 0.0, -1.0]], np.float32))
    assert pred.tolist() == [0] and conf[0] == pytest.approx(np.exp(2) / (np.exp(2) + 1 + np.exp(-1)), rel=1e-5)
    pred, conf = top_class(np.array([[0.9], [0.2]], np.float32))  # one sigmoid unit
    assert pred.tolist() == [1, 0] and conf == pytest.approx([0.9, 0.8])
    pred, conf = top_class(np.array([[2.0], [-3.0]], np.float32))  # one logit unit
    assert pred.tolist() == [1, 0] and conf[1] == pytest.approx(1 - 1 / (1 + np.exp(3)))


@pytest.mark.parametrize("out", [
    np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32),  # probabilities
    np.array([[2.0, 0.0, -1.0], [-5.0, 3.0, 2.999]], np.float32),  # logits
    np.array([[0.9], [0.2], [0.5]], np.float32),  # one sigmoid unit
    np.array([[2.0], [-3.0], [0.0]], np.float32),  # one logit unit
])
def test_one_output_rule_for_normalize_and_diagnose(out):
    """`tlviz.outputs` is the one output->class rule: the class alone equals the class with its probability."""
    from tlviz.outputs import first_output, predicted_classes, top_class

    pred, conf = top_class(out)
    np.testing.assert_array_equal(predicted_classes(out), pred)
    assert ((conf >= 0.5 - 1e-6) | (out.shape[1] > 2)).all()
    for several in ({"probs": out, "features": out * 0}, [out, out * 0], (out,)):  # the first output is read
        np.testing.assert_array_equal(predicted_classes(first_output(several)), pred)


# -- custom presets and settings -----------------------------------------------------

@pytest.mark.parametrize("scale, mean, std, expected", [
    (None, None, None, CustomPreset(1 / 255, 0.0, 1.0)),
    ("0.5", "1", "2", CustomPreset(0.5, 1.0, 2.0)),
    ("0.00392157", "0.485, 0.456, 0.406", "0.229;0.224;0.225",
     CustomPreset(0.00392157, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
])
def test_custom_preset_from_text(scale, mean, std, expected):
    assert nz.custom_preset(scale, mean, std) == expected


@pytest.mark.parametrize("scale, mean, std, message", [
    (None, None, "0", "must not contain 0"),
    (None, None, "1, 0, 1", "must not contain 0"),
    ("abc", None, None, "must be a number"),
    (None, "1, 2", None, "one number or three"),
    ("1, 2, 3", None, None, "takes one number"),
    ("0", None, None, "must not be 0"),
    (None, "nan", None, "finite"),
])
def test_custom_preset_rejects_bad_text(scale, mean, std, message):
    with pytest.raises(nz.NormalizationRefused, match=message):
        nz.custom_preset(scale, mean, std)


def test_custom_preset_equal_to_tf_ties_and_the_named_preset_wins(loaded_base, base_images):
    custom = nz.custom_preset(1 / 255, 0.5, 0.5)  # the same as tf
    report = nz.analyze(loaded_base, base_images, custom=custom, variants=False)
    assert report.accuracy[custom.name] == pytest.approx(report.accuracy["tf"])
    assert report.best_preset == "tf" and report.fingerprint.best == "tf"
    assert report.results["kind"].tolist()[:2] == ["preset", "custom"]
    assert report.preset_object(custom.name) is custom
    assert "(x * " in report.snippet(nz.Setting(custom))


def test_one_class_predictor_is_inconclusive_but_keeps_the_fingerprint(base_images):
    """A model that predicts one class for everything ties at chance: no best preset, the fingerprint is reported."""
    import keras

    model = _tiny_model(bn=True, name="one_class")
    dense = model.layers[-1]
    dense.kernel.assign(np.zeros(dense.kernel.shape, np.float32))
    dense.bias.assign(np.array([5.0, 0, 0, 0, 0], np.float32))
    bn = model.get_layer("bn")
    act = keras.ops.convert_to_numpy(model.get_layer("conv")(nz.apply_preset(base_images.images[:200], "torch")))
    act = act.reshape(-1, act.shape[-1])
    bn.moving_mean.assign(act.mean(axis=0))
    bn.moving_variance.assign(act.var(axis=0))
    report = nz.analyze(model, base_images, variants=False)
    assert report.results["accuracy"].nunique() == 1
    assert report.fingerprint.best == "torch"
    assert report.best_preset is None and report.best_by is None and report.inconclusive
    assert "`torch`" in report.agreement_note and "cannot be confirmed" in report.agreement_note


@pytest.mark.parametrize("right_under_unit, expected_top", [(52, "tf"), (70, "unit")])
def test_accuracy_within_sampling_noise_goes_to_the_fingerprint(right_under_unit, expected_top):
    """`unit` is more accurate, but only significantly so (paired McNemar test) in the second case."""
    labels = np.zeros(100, dtype=np.int64)
    files = [f"{i}.png" for i in range(100)]

    def evaluation(preset, n_right):
        pred = np.where(np.arange(100) < n_right, 0, 1).astype(np.int32)
        return nz.Evaluation(nz.Setting(preset), pred, np.full(100, 0.9, np.float32), labels, files)

    ranking = pd.DataFrame({"rank": [1, 2], "preset": ["tf", "unit"], "distance": [0.01, 0.8],
                            "mean_shift": [0.0, 0.0], "std_ratio": [1.0, 1.0], "is_best": [True, False]})
    fp = nz.Fingerprint(ranking, "bn")
    table = ranked_table([evaluation("unit", right_under_unit), evaluation("tf", 50)], fp, True)
    assert table["preset"].iloc[0] == expected_top
    assert table["is_best"].iloc[0] and table["rank"].tolist() == [1, 2]
    note = agreement_note(expected_top, fp, None, table)
    assert ("within sampling noise" in note) == (expected_top == "tf")


def test_setting_validation_and_labels():
    assert nz.Setting("tf").label == "tf" and nz.Setting("tf").kind == "preset"
    assert nz.Setting("tf", "nearest").label == "tf · nearest resize"
    assert nz.Setting("tf", "crop").kind == "resize"
    assert nz.Setting("tf", channel_order="BGR").label == "tf · BGR"
    assert nz.Setting(CustomPreset()).kind == "custom"
    assert nz.Setting("tf").key != nz.Setting("tf", "area").key
    for bad in (dict(preset="imagenet"), dict(preset="tf", resize="lanczos"), dict(preset="tf", channel_order="BRG")):
        with pytest.raises(ValueError, match="Unknown"):
            nz.Setting(**bad)


def test_images_of_the_wrong_size_are_refused(loaded_base, base_source):
    small = base_source.load((16, 16), 3)
    with pytest.raises(nz.NormalizationRefused, match="expects 32x32x3"):
        nz.analyze(loaded_base, small)
    with pytest.raises(nz.NormalizationRefused, match="expects"):
        nz.fingerprint(loaded_base, small)


def test_resize_variant_needs_the_source(loaded_base, base_images):
    with pytest.raises(nz.NormalizationRefused, match="pass `source=`"):
        nz.evaluate_setting(loaded_base, base_images, nz.Setting("tf", "nearest"))


def test_grayscale_images_skip_rgb_only_presets(base_source):
    import keras

    from tlviz.models import summarize

    inp = keras.Input((32, 32, 1))
    out = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    gray = summarize(keras.Model(inp, out, name="gray"))
    images = base_source.load((32, 32), 1)
    report = nz.analyze(gray, images, variants=True)
    assert set(report.results["preset"]) == {"raw", "unit", "tf"}
    assert "channel order" not in set(report.results["kind"])
    with pytest.raises(nz.NormalizationRefused, match="needs 3-channel"):
        nz.evaluate_preset(gray, images, "caffe")


def test_progress_callbacks_fingerprint_first_then_the_table(loaded_base, base_images, base_source):
    events = []
    calls = []

    def evaluate(setting):
        calls.append(setting.key)
        return nz.evaluate_setting(loaded_base, base_images, setting, source=base_source)

    report = nz.analyze(
        loaded_base, base_images, source=base_source, presets=["unit", "tf"], evaluate=evaluate,
        on_fingerprint=lambda fp: events.append(("fingerprint", fp.best)),
        progress=lambda f, text: events.append(("progress", f)),
        on_result=lambda table: events.append(("table", len(table))))
    kinds = [e[0] for e in events]
    assert kinds.index("fingerprint") < kinds.index("table")
    assert events[kinds.index("fingerprint")][1] == "tf"
    fractions = [e[1] for e in events if e[0] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    tables = [e[1] for e in events if e[0] == "table"]
    assert tables == list(range(1, len(report.results) + 1))  # one new row per setting
    assert len(calls) == len(report.results) == 2 + 3 + 1  # presets, resize variants, BGR
    assert report.best_preset == "tf"


# -- command line ----------------------------------------------------------------

def _cli(args, capsys):
    from tlviz.cli import main

    rc = main(["normalize", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_json_ranks_tf_first(base_model_path, digits_0_4, capsys):
    rc, out, err = _cli([base_model_path, digits_0_4, "--json"], capsys)
    assert rc == 1  # the default inference preset (unit) costs accuracy: an error-level finding
    obj = json.loads(out)
    assert set(obj) == {"results", "best", "inconclusive", "chance", "fingerprint", "builtin_preprocessing",
                        "inference_preset", "findings"}
    assert [(f["id"], f["severity"]) for f in obj["findings"]] == [("preset-mismatch", "error")]
    assert obj["best"] == "tf"
    assert [r["preset"] for r in obj["results"]][0] == "tf"
    assert len(obj["results"]) == len(PRESETS)  # variants are not part of the JSON
    assert obj["fingerprint"][0]["preset"] == "tf"
    assert all(isinstance(r["n"], int) and r["n"] > 0 for r in obj["results"])


def test_cli_text_report_shows_best_setting_and_snippet(base_model_path, digits_0_4, capsys):
    rc, out, _ = _cli([base_model_path, digits_0_4, "--custom-mean", "0.5", "--custom-std", "0.5"], capsys)
    assert rc == 1  # the ERROR below
    assert "Best setting: tf (by accuracy)" in out
    assert "x / 127.5 - 1.0" in out
    assert "tf · BGR" in out and "custom(" in out
    assert "ERROR: Your inference preset `unit`" in out


def test_cli_json_when_classes_do_not_match(base_model_path, digits_5_9, capsys):
    rc, out, err = _cli([base_model_path, digits_5_9, "--json"], capsys)
    assert rc == 0
    obj = json.loads(out)
    assert all(r["accuracy"] is None for r in obj["results"])
    assert obj["best"] == "tf"
    assert "accuracy cannot be measured" in err


@pytest.mark.parametrize("args, message", [
    (["missing.keras", "{images}"], "Model file not found"),
    (["{model}", "/no/such/folder"], "Image folder not found"),
    (["{model}", "{images}", "--custom-std", "0"], "must not contain 0"),
    (["{model}", "{images}", "--batch-size", "0"], "--batch-size must be 1 or more"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(args, message, base_model_path, digits_0_4, capsys):
    args = [a.format(model=base_model_path, images=digits_0_4) for a in args]
    rc, out, err = _cli(args, capsys)
    assert rc == 2
    assert out == ""
    assert "\nerror: " in "\n" + err and message in err  # after any progress lines


@pytest.mark.slow
def test_cli_module_without_batchnorm_prints_fingerprint_null(tmp_path, digits_0_4):
    """End to end through ``python -m tlviz``: stdout is exactly one JSON object."""
    path = tmp_path / "no_bn.keras"
    _tiny_model(bn=False, name="no_bn").save(path)
    proc = subprocess.run([sys.executable, "-m", "tlviz", "normalize", str(path), str(digits_0_4), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["fingerprint"] is None
    assert "has no BatchNormalization layer" in proc.stderr
    assert len(obj["results"]) == len(PRESETS)


# -- charts --------------------------------------------------------------------

def _layers(chart):
    spec = chart.to_dict()
    return spec, spec["layer"]


def _values(spec):
    return next(iter(spec["datasets"].values()))


def test_ranking_chart_highlights_the_winner(base_report):
    spec, layers = _layers(charts.ranking_chart(base_report.results))
    bar, whisker, text = layers
    assert bar["mark"]["type"] == "bar" and text["mark"]["type"] == "text"
    assert whisker["mark"]["type"] == "rule"
    assert (whisker["encoding"]["x"]["field"], whisker["encoding"]["x2"]["field"]) == ("accuracy_low", "accuracy_high")
    enc = bar["encoding"]
    assert enc["x"]["field"] == "accuracy" and enc["x"]["scale"]["domain"] == [0, 1]
    assert enc["y"]["sort"] == list(base_report.results["setting"])  # best first
    assert enc["color"]["field"] == "is_best"
    assert enc["color"]["scale"]["range"][0] == charts.palette.BEST_COLOR
    rows = _values(spec)
    assert [r["setting"] for r in rows if r["is_best"]] == ["tf"]


def test_ranking_chart_refuses_hidden_accuracy_and_unknown_metrics(base_report):
    hidden = base_report.results.assign(accuracy=np.nan)
    with pytest.raises(ValueError, match="mean_confidence"):
        charts.ranking_chart(hidden)
    spec, layers = _layers(charts.ranking_chart(hidden, "mean_confidence"))
    assert layers[0]["encoding"]["x"]["field"] == "mean_confidence"
    with pytest.raises(ValueError, match="Unknown metric"):
        charts.ranking_chart(base_report.results, "loss")


def test_per_class_heatmap_spec(base_report):
    spec, (rect, text) = _layers(charts.per_class_heatmap(base_report.per_class, base_report.presets))
    assert rect["mark"]["type"] == "rect"
    assert rect["encoding"]["x"]["field"] == "class"
    assert rect["encoding"]["y"]["sort"] == base_report.presets
    assert rect["encoding"]["color"]["field"] == "accuracy"
    assert rect["encoding"]["color"]["scale"]["domain"] == [0, 1]
    assert text["encoding"]["text"]["field"] == "accuracy"
    assert len(_values(spec)) == len(base_report.per_class)


def test_fingerprint_chart_spec(base_report):
    ranking = base_report.fingerprint.ranking
    spec, (bar, text) = _layers(charts.fingerprint_chart(ranking))
    assert bar["encoding"]["x"]["field"] == "match" and bar["encoding"]["x"]["scale"]["domain"] == [0, 1]
    assert text["encoding"]["text"]["field"] == "distance"
    assert bar["encoding"]["y"]["sort"][0] == "tf"
    rows = _values(spec)
    assert [r["preset"] for r in rows if r["is_best"]] == ["tf"]
    for r in rows:
        assert r["match"] == pytest.approx(math.exp(-r["distance"]))
    assert rows[0]["match"] > 0.99 and rows[-1]["match"] < 1e-6  # tf matches, raw does not
    assert isinstance(ranking, pd.DataFrame)


def test_ranking_chart_marks_chance_and_intervals(base_report):
    spec, layers = _layers(charts.ranking_chart(base_report.results, chance=base_report.chance))
    chance = layers[-1]
    assert chance["mark"]["type"] == "rule" and chance["mark"]["strokeDash"] == [4, 3]
    values = spec["datasets"]
    assert any(v == [{"chance": pytest.approx(base_report.chance)}] for v in values.values())
    assert "chance" in spec["title"] and "95 % interval" in spec["title"]
    rows = _values(spec)
    assert all(r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] for r in rows)


def test_cli_says_no_best_setting_for_an_untrained_model(tmp_path, digits_0_4):
    """The real command on a model whose head was never trained: no best setting, in text and JSON."""
    path = tmp_path / "untrained.keras"
    _tiny_model(bn=False, name="untrained").save(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    text = subprocess.run([sys.executable, "-m", "tlviz", "normalize", str(path), str(digits_0_4), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "NO BEST SETTING:" in text.stdout and "better than chance" in text.stdout
    assert "Best setting:" not in text.stdout
    js = subprocess.run([sys.executable, "-m", "tlviz", "normalize", str(path), str(digits_0_4), "--json",
                         "--quiet"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    obj = json.loads(js.stdout)
    assert obj["best"] is None and "better than chance" in obj["inconclusive"]


def test_normalize_and_diagnose_share_the_drop_threshold():
    """The 5-point accuracy gap is written once (`tlviz.stats`); the diagnose registry's entries reference it."""
    from tlviz.diagnose.registry import threshold
    from tlviz.normalize import findings
    from tlviz.stats import NOTICEABLE_DROP

    assert threshold("normalization-mismatch", "drop") == threshold("double-normalization", "drop") == NOTICEABLE_DROP
    assert findings.NOTICEABLE_DROP is NOTICEABLE_DROP


# -- uncertainty (issue 13): a drop counts only when its paired interval clears the 5 points ------------------

def test_findings_show_the_drop_interval_and_the_images(base_report):
    from tlviz.stats import NOTICEABLE_DROP

    found = {f.id: f for f in nz.normalization_findings(base_report, "unit")}
    for fid in ("preset-mismatch", "channel-order-sensitive"):
        ev = found[fid].evidence
        lo, hi = ev["drop_interval"]
        assert NOTICEABLE_DROP <= lo <= ev["drop"] <= hi and ev["n_images"] == base_report.n_images
        assert "95 % interval" in found[fid].fix and f"{base_report.n_images} images" in found[fid].fix
    assert "resize-sensitive" not in found  # every resize method scores the same
    assert nz.findings.undecided_findings(base_report, "unit") == {}
    d = nz.findings.accuracy_drop(base_report, "tf", "tf · nearest resize")
    assert d.difference == 0 and d.high < NOTICEABLE_DROP


def test_too_few_images_to_decide_a_drop_is_no_finding(loaded_base, base_images, base_source):
    from dataclasses import replace

    keep = np.concatenate([np.flatnonzero(base_images.labels == c)[:8] for c in range(5)])
    few = replace(base_images, images=base_images.images[keep], labels=base_images.labels[keep],
                  files=[base_images.files[i] for i in keep],
                  original_sizes=[base_images.original_sizes[i] for i in keep])
    report = nz.analyze(loaded_base, few, source=base_source)
    assert "resize-sensitive" not in {f.id for f in nz.normalization_findings(report, "tf")}
    undecided = nz.findings.undecided_findings(report, "tf")
    assert "Too few images to decide" in undecided["resize-sensitive"] and "40 images" in undecided["resize-sensitive"]
