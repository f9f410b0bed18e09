"""Repairs (issue 15): each fault planted in a small model, repaired on a copy, and the improvement measured.

The repaired files are loaded in a plain Keras process (no tlviz imported) with ``safe_mode=True`` and
must predict what they predict inside tlviz.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tlviz.errors import RepairRefused

PRESETS_OF_DIGITS = "tf"  # the preset the sample model was trained with


@pytest.fixture(scope="module")
def digits(loaded_base, base_images):
    return loaded_base, base_images


def _planted(model, name: str, metadata=None):
    from tlviz.models import summarize

    return summarize(model, filename=f"{name}.keras", metadata=metadata or {})


def _copy(loaded):
    from tlviz.repair.graph import copy_model

    return copy_model(loaded.model)


def _accuracy(model, images, preset) -> float:
    from tlviz.outputs import predicted_classes
    from tlviz.presets import apply_preset

    preds = predicted_classes(model.predict(apply_preset(images.images, preset), verbose=0, batch_size=256))
    return float(np.mean(preds == images.labels))


def _check_halves(step, images):
    assert step.n_fit + step.n_eval == len(images)
    assert abs(step.n_fit - step.n_eval) <= 5  # class by class, halves
    lo, hi = step.interval
    assert lo <= step.after - step.before <= hi


@pytest.fixture(scope="module")
def repaired_files(tmp_path_factory):
    """Every repaired file a test made, with the inputs it takes, for the plain-Keras check at the end."""
    return {"dir": tmp_path_factory.mktemp("repaired"), "files": []}


def _keep(repaired_files, result, images, n: int = 24):
    """Save the repaired file and tlviz's own predictions on `n` images fed as the copy expects."""
    from tlviz.models import load_model
    from tlviz.presets import apply_preset

    d = repaired_files["dir"]
    i = len(repaired_files["files"])
    path = d / f"{i}_{result.filename}"
    path.write_bytes(result.model_bytes)
    x = apply_preset(images.images[:n], result.feed_preset)
    loaded = load_model(path)  # tlviz's own safe loader
    np.save(d / f"{i}_x.npy", x)
    np.save(d / f"{i}_y.npy", np.asarray(loaded.model.predict(x, verbose=0)))
    repaired_files["files"].append(i)
    return loaded


# -- split and arithmetic -------------------------------------------------------------------------

def test_split_is_seeded_class_by_class_and_disjoint():
    from tlviz.repair.chain import split_halves

    labels = np.repeat(np.arange(3), [10, 7, 21])
    fit, held = split_halves(labels)
    assert set(fit).isdisjoint(held) and len(fit) + len(held) == len(labels)
    assert [int(np.sum(labels[fit] == c)) for c in range(3)] == [5, 3, 10]  # the smaller half estimates
    again = split_halves(labels)
    assert np.array_equal(fit, again[0]) and not np.array_equal(fit, split_halves(labels, seed=1)[0])


@pytest.mark.parametrize("preset", ["raw", "unit", "tf", "torch", "caffe"])
def test_preset_maps_are_read_from_keras_and_invert(preset):
    from tlviz.presets import apply_preset
    from tlviz.repair.affine import preset_affine

    x = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3)).astype(np.uint8)
    a = preset_affine(preset)
    assert a.flip == (preset == "caffe")
    np.testing.assert_allclose(a.apply(x), apply_preset(x, preset), atol=1e-4)
    np.testing.assert_allclose(a.inverse().apply(apply_preset(x, preset)), x, atol=1e-3)


# -- normalization-mismatch -------------------------------------------------------------------------

def test_normalization_mismatch_baked_in_takes_raw_pixels(digits, repaired_files):
    from tlviz.repair import repair

    loaded, images = digits
    result = repair(loaded, images, ["normalization-mismatch"], "unit")
    step = result.steps[0]
    assert step.details["expected_preset"] == PRESETS_OF_DIGITS  # found on the estimation half
    assert result.feed_preset == "raw" and step.feed_before == "unit"
    _check_halves(step, images)
    assert step.before < 0.7 and step.after >= 0.97
    # The repaired model on raw pixels scores what the original scores under its best preset.
    assert abs(step.after - step.details["accuracy_original_expected_preset"]) <= 0.005
    assert step.details["agreement_with_original"] >= 0.995
    assert result.overall["after"] == pytest.approx(step.after) and result.overall["interval"][0] > 0.3
    assert result.metadata["preset"] == "raw" and result.metadata["class_names"] == loaded.class_names
    reloaded = _keep(repaired_files, result, images)
    assert [layer.__class__.__name__ for layer in reloaded.model.layers[:2]] == ["InputLayer", "Rescaling"]
    assert reloaded.recorded_preset == "raw"
    assert loaded.model.get_layer("block1_conv") is not reloaded.model.get_layer("block1_conv")
    assert _accuracy(reloaded.model, images, "raw") >= 0.97


def test_normalization_mismatch_can_accept_what_the_code_sends(digits, repaired_files):
    from tlviz.repair import repair

    loaded, images = digits
    result = repair(loaded, images, "normalization-mismatch", "unit", target="inference")
    step = result.steps[0]
    assert result.feed_preset == "unit" and step.after >= 0.97 and step.before < 0.7
    assert abs(step.after - step.details["accuracy_original_expected_preset"]) <= 0.005
    assert "x * 2 - 1" in step.details["arithmetic"]  # unit -> tf
    _keep(repaired_files, result, images)


def test_caffe_model_gets_a_channel_flip_from_built_in_layers(digits, repaired_files):
    """A model that expects caffe input (BGR, ImageNet means subtracted) repaired to take raw RGB pixels."""
    from tlviz.repair import repair
    from tlviz.repair.affine import preset_affine
    from tlviz.repair.preprocessing import prepend_affine

    loaded, images = digits
    plant, _ = prepend_affine(loaded.model, preset_affine("caffe").inverse().then(preset_affine("tf")))
    assert _accuracy(plant, images, "caffe") >= 0.97 > 0.7 > _accuracy(plant, images, "unit")  # keras's own caffe
    result = repair(_planted(plant, "caffe_model"), images, ["normalization-mismatch"], "unit")
    step = result.steps[0]
    assert step.details["expected_preset"] == "caffe" and step.after >= 0.97
    assert abs(step.after - step.details["accuracy_original_expected_preset"]) <= 0.005
    reloaded = _keep(repaired_files, result, images)
    classes = [layer.__class__.__name__ for layer in reloaded.model.layers]
    assert "Lambda" not in classes and classes[1:3] == ["Rescaling", "Conv2D"]
    assert not reloaded.model.layers[2].trainable


def test_nothing_to_bake_in_is_refused_with_the_reason(digits):
    from tlviz.repair import repair

    loaded, images = digits
    with pytest.raises(RepairRefused, match="already scores best with what your code sends"):
        repair(loaded, images, ["normalization-mismatch"], "tf", target="inference")


# -- label-order-mismatch --------------------------------------------------------------------------

def _permuted(loaded, shift: int = 2):
    model = _copy(loaded)
    dense = model.get_layer("predictions")
    k, b = (np.asarray(v) for v in dense.get_weights())
    perm = np.roll(np.arange(k.shape[1]), shift)  # planted: output j is what output perm[j] was
    dense.set_weights([k[:, perm], b[perm]])
    return model, perm


def test_label_order_is_estimated_on_one_half_and_measured_on_the_other(digits, repaired_files):
    from tlviz.repair import repair

    loaded, images = digits
    model, perm = _permuted(loaded)
    result = repair(_planted(model, "shuffled", loaded.metadata), images, ["label-order-mismatch"], "tf")
    step = result.steps[0]
    _check_halves(step, images)
    assert step.before < 0.05 and step.after >= 0.97 and step.interval[0] > 0.9
    assert step.details["accuracy_fit_after"] >= 0.97  # estimated on the other half
    inverse = np.argsort(perm)
    assert step.details["assignment"] == [int(i) for i in inverse]
    assert result.metadata["class_names"] == ["0", "1", "2", "3", "4"]
    _keep(repaired_files, result, images)


def test_label_order_and_normalization_combine_in_the_explained_order(digits):
    from tlviz.repair import repair

    loaded, images = digits
    model, _ = _permuted(loaded, 1)
    result = repair(_planted(model, "shuffled_unit"), images, ["normalization-mismatch", "label-order-mismatch"],
                    "unit")
    assert result.ids == ["label-order-mismatch", "normalization-mismatch"]
    assert "class order" in result.order_note
    labels_step, norm_step = result.steps
    assert labels_step.feed_before == "tf"  # estimated on images prepared as the model expects
    assert labels_step.after >= 0.97 and norm_step.after >= 0.97
    assert result.overall["before"] < 0.3 and result.overall["after"] >= 0.97


def test_label_order_already_right_is_refused(digits):
    from tlviz.repair import repair

    loaded, images = digits
    with pytest.raises(RepairRefused, match="nothing to re-order"):
        repair(loaded, images, ["label-order-mismatch"], "tf")


def test_single_sigmoid_unit_swaps_its_two_classes(repaired_files):
    """A binary model with one sigmoid unit, its two classes planted the wrong way round: the unit is negated."""
    import keras

    from tlviz.imagesets import ImageSet
    from tlviz.repair import repair

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    level = np.where(labels == 1, rng.integers(150, 250, 80), rng.integers(5, 100, 80))
    pixels = np.clip(level[:, None, None, None] + rng.integers(-5, 6, (80, 8, 8, 3)), 0, 255).astype(np.uint8)
    images = ImageSet(pixels, labels, ["dark", "bright"], [f"{i}.png" for i in range(80)])
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Dense(1, activation="sigmoid", name="unit")(keras.layers.GlobalAveragePooling2D()(inp))
    model = keras.Model(inp, out)
    model.get_layer("unit").set_weights([np.full((3, 1), -10 / 3, np.float32), np.array([5.0], np.float32)])
    result = repair(_planted(model, "binary"), images, ["label-order-mismatch"], "unit")
    step = result.steps[0]
    assert step.before == 0.0 and step.after == 1.0 and step.details["assignment"] == [1, 0]
    _keep(repaired_files, result, images, n=8)


# -- bn-statistics-mismatch -------------------------------------------------------------------------

def _broken_statistics(loaded):
    model = _copy(loaded)
    rng = np.random.default_rng(1)
    for name in ("block1_bn", "block2_bn", "block3_bn"):
        bn = model.get_layer(name)
        mean, var = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
        bn.moving_mean.assign(mean + 1.5 * np.sqrt(var) * rng.standard_normal(mean.shape))
        bn.moving_variance.assign(var * rng.uniform(0.1, 10, var.shape))
    return model


def test_adabn_restores_accuracy_and_says_how_far_statistics_moved(digits, repaired_files):
    from tlviz.repair import repair

    loaded, images = digits
    planted = _broken_statistics(loaded)
    result = repair(_planted(planted, "bad_bn", loaded.metadata), images, ["bn-statistics-mismatch"], "tf")
    step = result.steps[0]
    _check_halves(step, images)
    assert step.before < 0.6 and step.after >= 0.95 and step.interval[0] > 0.3
    layers = step.details["layers"]
    assert [r["layer"] for r in layers] == ["block1_bn", "block2_bn", "block3_bn"]
    assert all(r["mean_shift"] > 0.1 for r in layers)
    reloaded = _keep(repaired_files, result, images)
    # Only the moving statistics changed: every other weight is the planted model's.
    for name in ("block1_conv", "predictions"):
        for a, b in zip(planted.get_layer(name).get_weights(), reloaded.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    gamma_planted, gamma_repaired = planted.get_layer("block2_bn").get_weights()[0], \
        reloaded.model.get_layer("block2_bn").get_weights()[0]
    np.testing.assert_array_equal(gamma_planted, gamma_repaired)


def test_adabn_then_baked_preprocessing(digits, repaired_files):
    from tlviz.repair import repair

    loaded, images = digits
    planted = _planted(_broken_statistics(loaded), "bad_bn_unit", loaded.metadata)
    result = repair(planted, images, ["normalization-mismatch", "bn-statistics-mismatch"], "unit")
    assert result.ids == ["bn-statistics-mismatch", "normalization-mismatch"]
    assert result.feed_preset == "raw"
    assert result.overall["before"] < 0.6 and result.overall["after"] >= 0.95
    assert result.overall["n_eval"] == result.steps[0].n_eval == result.steps[1].n_eval
    _keep(repaired_files, result, images)


def test_a_repair_without_a_clear_gain_says_so(digits):
    from tlviz.repair import repair

    loaded, images = digits
    step = repair(loaded, images, ["bn-statistics-mismatch"], "tf").steps[0]  # the statistics were right
    assert step.interval[0] <= 0 <= step.interval[1]
    assert any("no clear gain" in n for n in step.notes)


def test_adabn_needs_batch_normalization(digits):
    import keras

    from tlviz.repair import repair

    loaded, images = digits
    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    plain = keras.Model(inp, keras.layers.Dense(5, activation="softmax")(x))
    with pytest.raises(RepairRefused, match="no BatchNormalization layer"):
        repair(_planted(plain, "plain"), images, ["bn-statistics-mismatch"], "tf")


# -- freezing -----------------------------------------------------------------------------------------

def test_frozen_model_gets_a_trainable_compiled_head(frozen_model_path, base_images, repaired_files):
    from tlviz.layers import layer_table
    from tlviz.models import load_model
    from tlviz.repair import repair

    frozen = load_model(frozen_model_path)
    result = repair(frozen, base_images, ["no-trainable-weights"], "tf")
    step = result.steps[0]
    assert step.measure == "trainable_params" and step.before == 0 and step.after == 325
    assert step.n_fit == step.n_eval == 0 and result.overall is None
    table = {r["path"]: r for r in step.details["freezing_table"]}
    assert table["new_head"]["trainable"] and not table["digits_features/block3_conv"]["trainable"]
    _keep(repaired_files, result, base_images)
    import keras

    path = repaired_files["dir"] / "compiled.keras"
    path.write_bytes(result.model_bytes)
    model = keras.models.load_model(path, safe_mode=True)  # as a user loads it: compiled, ready for fit
    assert model.compiled and model.optimizer.__class__.__name__ == "Adam"
    head0 = [np.array(w) for w in model.get_layer("new_head").get_weights()]
    base0 = [np.array(w) for w in model.get_layer("digits_features").get_weights()]
    model.fit(base_images.images[:64] / 127.5 - 1, base_images.labels[:64], epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(head0, model.get_layer("new_head").get_weights()))
    for a, b in zip(base0, model.get_layer("digits_features").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(layer_table(frozen.model)["trainable_params"].sum()) == 0  # the loaded model never changed


def test_top_block_option_unfreezes_the_top_block_but_not_its_batch_normalization(frozen_model_path, base_images):
    from tlviz.models import load_model
    from tlviz.repair import repair

    result = repair(load_model(frozen_model_path), base_images, ["no-trainable-weights"], "tf", top_block=True)
    step = result.steps[0]
    assert step.details["unfrozen"] == ["new_head", "digits_features/block3_conv"]
    table = {r["path"]: r for r in step.details["freezing_table"]}
    assert table["digits_features/block3_conv"]["trainable"] and not table["digits_features/block3_bn"]["trainable"]


def test_frozen_head_is_unfrozen_and_the_rest_kept(digits):
    from tlviz.repair import repair

    loaded, images = digits
    model = _copy(loaded)
    model.get_layer("predictions").trainable = False
    result = repair(_planted(model, "head_frozen"), images, ["head-frozen"], "tf")
    step = result.steps[0]
    assert step.after > step.before and step.details["unfrozen"] == ["predictions"]
    assert all(r["trainable"] for r in step.details["freezing_table"] if not r["path"].endswith("_bn"))
    with pytest.raises(RepairRefused, match="does not apply"):
        repair(loaded, images, ["no-trainable-weights"], "tf")


# -- double-normalization ---------------------------------------------------------------------------

def _scaling_inside(loaded):
    """The sample with its `tf` scaling inside: a Rescaling layer at the input, so it takes raw pixels."""
    import keras

    from tlviz.repair.graph import prepend_layers

    return prepend_layers(loaded.model, [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="own_scaling")])


def test_double_normalization_shows_both_variants_and_drops_the_layer(digits, repaired_files):
    from tlviz.repair import repair

    loaded, images = digits
    planted = _planted(_scaling_inside(loaded), "scales_itself")
    result = repair(planted, images, ["double-normalization"], "unit")
    step = result.steps[0]
    variants = step.details["variants"]
    assert step.n_fit == 0 and step.n_eval == len(images)  # nothing estimated: every image measures
    assert step.before < 0.7
    assert variants["drop-layer"]["accuracy"] >= 0.97 and variants["feed-raw"]["accuracy"] >= 0.97
    assert variants["drop-layer"]["removed"] == ["own_scaling"]
    assert result.feed_preset == "unit"
    reloaded = _keep(repaired_files, result, images)
    names = [layer.name for layer in reloaded.model.layers]
    assert "own_scaling" not in names and "tlviz_input_scale" in names  # unit -> what the layer produced

    raw = repair(planted, images, ["double-normalization"], "unit", double_normalization="feed-raw")
    assert raw.feed_preset == "raw" and raw.steps[0].after == pytest.approx(variants["feed-raw"]["accuracy"])


def test_double_normalization_with_the_same_arithmetic_just_drops_the_layer(digits):
    from tlviz.repair import repair

    loaded, images = digits
    result = repair(_planted(_scaling_inside(loaded), "scales_itself"), images, ["double-normalization"], "tf")
    assert result.steps[0].details["variants"]["drop-layer"]["added"] == []
    assert result.steps[0].after >= 0.97
    with pytest.raises(RepairRefused, match="no Rescaling or Normalization layer"):
        repair(loaded, images, ["double-normalization"], "unit")


# -- refusals -----------------------------------------------------------------------------------------

def test_unknown_and_conflicting_repairs_are_refused():
    from tlviz.repair import check_fixes

    with pytest.raises(RepairRefused, match="Unknown repair 'nope'"):
        check_fixes("nope")
    with pytest.raises(RepairRefused, match="has no automatic repair"):
        check_fixes(["class-imbalance"])
    with pytest.raises(RepairRefused, match="choose one"):
        check_fixes("normalization-mismatch,double-normalization")
    assert check_fixes("head-frozen, bn-statistics-mismatch") == ["bn-statistics-mismatch", "head-frozen"]


def test_unlabelled_images_are_refused_with_the_reason(loaded_base, digits_0_4, tmp_path):
    import shutil

    from tlviz.imagesets import load_image_set
    from tlviz.repair import repair

    one = tmp_path / "one" / "all"
    one.mkdir(parents=True)
    for p in sorted((digits_0_4 / "1").glob("*.png"))[:20]:
        shutil.copy(p, one / p.name)
    images = load_image_set(tmp_path / "one", loaded_base.image_size, 3)
    with pytest.raises(RepairRefused, match="labelled images"):
        repair(loaded_base, images, ["bn-statistics-mismatch"], "tf")


# -- the files, outside tlviz ---------------------------------------------------------------------------

_PLAIN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    import keras
    d = Path(sys.argv[1])
    out = {}
    for i in json.loads(sys.argv[2]):
        path = next(d.glob(f"{i}_*.keras"))
        model = keras.models.load_model(path, safe_mode=True)
        y = np.asarray(model.predict(np.load(d / f"{i}_x.npy"), verbose=0))
        out[path.name] = float(np.max(np.abs(y - np.load(d / f"{i}_y.npy"))))
    assert "tlviz" not in sys.modules
    print(json.dumps(out))
""")


def test_zz_repaired_files_load_in_plain_keras_and_predict_the_same(repaired_files):
    """Runs last in this module: every file the tests above saved, in a process that never imports tlviz."""
    files = repaired_files["files"]
    assert len(files) >= 8
    done = subprocess.run([sys.executable, "-c", _PLAIN, str(repaired_files["dir"]), json.dumps(files)],
                          capture_output=True, text=True, timeout=300, cwd=str(repaired_files["dir"]))
    assert done.returncode == 0, done.stderr[-3000:]
    diffs = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(diffs) == len(files)
    assert max(diffs.values()) <= 1e-5, diffs


# -- the command line and the report ----------------------------------------------------------------------

def test_cli_prints_the_applied_repairs_and_writes_the_file(base_model_path, digits_0_4, tmp_path, capsys):
    from tlviz.cli import main
    from tlviz.models import load_model

    out = tmp_path / "fixed.keras"
    code = main(["repair", str(base_model_path), str(digits_0_4), "--fix", "normalization-mismatch", "--out",
                 str(out), "--json", "-q"])
    assert code == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["model_path"] == str(out)
    step = obj["applied"][0]
    assert {"id", "before", "after", "n_fit", "n_eval"} <= set(step)
    assert step["id"] == "normalization-mismatch" and step["after"] > step["before"]
    assert step["n_fit"] + step["n_eval"] == 901
    assert load_model(out).recorded_preset == "raw"
    # Refusals exit 2 with the reason, and nothing is overwritten.
    for fix, reason in (("nope", "Unknown repair"), ("label-order-mismatch", "nothing to re-order"),
                        ("normalization-mismatch", "never overwrites")):
        target = out if reason == "never overwrites" else tmp_path / "other.keras"
        args = ["repair", str(base_model_path), str(digits_0_4), "--fix", fix, "--out", str(target), "-q"]
        if fix == "label-order-mismatch":
            args += ["--preset", "tf"]
        assert main(args) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "other.keras").exists()


def test_diagnosis_markdown_lists_the_repairs_applied(digits):
    from tlviz.diagnose import diagnose
    from tlviz.repair import repair

    loaded, images = digits
    report = diagnose(loaded, images, "unit", checks=["normalization-mismatch"])
    result = repair(loaded, images, ["normalization-mismatch"], "unit")
    md = report.to_markdown(repairs=[result])
    assert "## Repairs applied" in md and "`normalization-mismatch`" in md.split("## Repairs applied")[1]
    assert f"| {result.steps[0].n_fit} | {result.steps[0].n_eval} |" in md
    assert "## Repairs applied" not in report.to_markdown()


def test_repair_job_runs_in_a_worker_and_is_stored(digits, runs):
    from tlviz import jobs

    loaded, images = digits
    params = {"fixes": ["normalization-mismatch"], "inference_preset": "unit"}
    job = jobs.start_analysis("repair", loaded, images, params)
    status = jobs.wait(job, timeout=240)
    assert status.state == "done", status.message
    result = jobs.load_result(job)
    assert result.steps[0].after >= 0.97 and result.model_bytes[:2] == b"PK"
    assert jobs.poll(jobs.start_analysis("repair", loaded, images, params)).from_store
    with pytest.raises(Exception, match="Unknown repair"):
        jobs.start_analysis("repair", loaded, images, {"fixes": ["nope"]})
