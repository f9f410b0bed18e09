"""Teachable Machine end to end: labels.txt, the `teachable` setting, the CLI and the overview page."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from conftest import teachable_zip
from tlviz import normalize as nz
from tlviz.imagesets import load_image_set, open_source
from tlviz.labels import is_indexed, parse_labels
from tlviz.presets import applicable_presets, apply_preset, preset_snippet


@pytest.mark.parametrize("text,names,indexed", [
    ("0 Cat\n1 Dog\n", ["Cat", "Dog"], True),
    ("1 Dog\n0 Cat\n\n", ["Cat", "Dog"], True),
    ("0 Class 1\n1 Class 2\n", ["Class 1", "Class 2"], True),
    ("cats\ndogs\n", ["cats", "dogs"], False),
    ("0 a\n2 b\n", ["0 a", "2 b"], False),  # not 0..n-1: names as written
    ("3 bears\n", ["3 bears"], False),
])
def test_labels_txt_both_spellings(text, names, indexed):
    assert parse_labels(text) == names and is_indexed(text) == indexed


def test_image_set_labels_txt_in_teachable_machine_spelling(tmp_path):
    root = tmp_path / "set"
    for c in ("Cat", "Dog"):
        (root / c).mkdir(parents=True)
        Image.new("RGB", (12, 8), (40, 90, 200)).save(root / c / "1.png")
    (root / "labels.txt").write_text("0 Dog\n1 Cat\n")
    s = load_image_set(root, (8, 8))
    assert s.class_names == ["Dog", "Cat"] and s.label_order_from_file


def test_teachable_preset_is_tf_arithmetic_with_a_centre_crop():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert np.array_equal(apply_preset(x, "teachable"), apply_preset(x, "tf"))
    snippet = preset_snippet("teachable", (224, 224))
    assert "img.crop((left, top, left + side, top + side))" in snippet and "x / 127.5 - 1.0" in snippet
    assert "teachable" not in applicable_presets(3) and "teachable" in applicable_presets(3, teachable=True)
    assert "teachable" not in applicable_presets(1, teachable=True)
    assert nz.Setting("teachable", "crop", base_resize="crop").label == "teachable"
    assert nz.Setting("teachable", "bilinear", base_resize="crop").label == "teachable · bilinear resize"


@pytest.fixture(scope="module")
def wide_set(tmp_path_factory, digits_0_4):
    """Digits pasted in the middle of wide canvases: a centre crop keeps the digit, a squashing resize distorts it."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    base = load_image_set(digits_0_4, (32, 32), 3)
    pick = np.linspace(0, len(base) - 1, 60).astype(int)  # every class, not only the first folder's
    for i, (img, label) in enumerate(zip(base.images[pick], base.labels[pick])):
        canvas = rng.integers(0, 20, size=(32, 128, 3), dtype=np.uint8)
        canvas[:, 48:80] = img
        folder = root / base.class_names[int(label)]
        folder.mkdir(exist_ok=True)
        Image.fromarray(canvas).save(folder / f"{i}.png")
    return root


def test_teachable_machine_model_gets_the_teachable_row(loaded_base, wide_set):
    tm = dataclasses.replace(loaded_base, teachable_machine=True)
    source = open_source(wide_set)
    images = source.load(tm.image_size, tm.channels)
    report = nz.analyze(tm, images, source=source, variants=False)
    row = report.results.set_index("setting").loc["teachable"]
    assert row["kind"] == "preset" and row["resize"] == "crop"
    # Its predictions are the model's on centre-cropped images under x / 127.5 - 1.
    cropped = source.load(tm.image_size, tm.channels, resize="crop")
    direct = nz.evaluate_setting(tm, cropped, nz.Setting("tf", "crop", base_resize="crop"))
    assert np.array_equal(report.predictions["teachable"], direct.predictions)
    # The sample was trained on whole digits with tf: cropping the centre keeps them whole.
    assert report.accuracy["teachable"] > report.accuracy["tf"] + 0.2
    assert report.best_preset == "teachable"
    assert "img.crop(" in report.snippet()
    # A model that is not from Teachable Machine is compared without it.
    plain = nz.analyze(loaded_base, images, source=source, variants=False)
    assert "teachable" not in plain.accuracy


def test_diagnose_judges_teachable_only_when_compared(loaded_base, base_images):
    from tlviz.diagnose import diagnose

    report = diagnose(loaded_base, base_images, inference_preset="unit", checks=["normalization-mismatch"])
    again = report.for_preset("teachable")
    skipped = {s.id: s.reason for s in again.skipped}
    assert "`teachable` was not compared in this diagnosis" in skipped["normalization-mismatch"]


def test_cli_convert_writes_a_keras_file(keras2, tmp_path, capsys):
    from tlviz.cli import main

    zpath = tmp_path / "converted_keras.zip"
    zpath.write_bytes(teachable_zip(keras2, "0 Cat\n1 Dog\n2 Bird\n"))
    out = tmp_path / "tm.keras"
    assert main(["convert", str(zpath), str(out), "--json", "--quiet"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["teachable_machine"] and obj["class_names"] == ["Cat", "Dog", "Bird"]
    assert obj["converted_from"]["notes"]["groups:DepthwiseConv2D"] == 17 and out.stat().st_size == obj["bytes"]
    assert main(["convert", str(zpath), str(tmp_path / "tm.h5"), "--quiet"]) == 2
    assert "must be a `.keras` file" in capsys.readouterr().err
    assert main(["layers", str(keras2 / "mobilenet.h5"), "--json", "--quiet"]) == 0
    layers = json.loads(capsys.readouterr().out)
    assert layers["converted_from"]["keras_version"] and layers["teachable_machine"] is False


def test_overview_page_names_teachable_machine_and_offers_the_download(keras2):
    from apptest_helpers import open_app, texts, upload_model

    at = open_app()
    upload_model(at, "converted_keras.zip", teachable_zip(keras2, "0 Cat\n1 Dog\n2 Bird\n"))
    assert not at.exception, at.exception
    shown = texts(at)
    assert "Teachable Machine image model" in shown and "Cat, Dog, Bird" in shown
    assert "Converted from a Keras 2" in shown and "17 `DepthwiseConv2D` layer(s) dropped `groups: 1`" in shown
    buttons = [b for b in at.get("download_button")]
    assert buttons, "no download button for the converted model"
    # A refused file afterwards leaves the Teachable Machine model loaded.
    upload_model(at, "model.onnx", b"\x08\x07\x12\x07pytorch")
    assert "ONNX model" in texts(at) and "Still using the previous model: converted_keras.zip" in texts(at)


def _two_class_folder(root, n: int = 6):
    rng = np.random.default_rng(3)
    for cls, colour in (("mug", (200, 40, 40)), ("plant", (40, 160, 60))):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = np.clip(rng.normal(colour, 40, size=(48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("new_head", [True, False])
def test_teachable_export_fine_tunes_with_its_own_preset_augmented(keras2, tmp_path, new_head):
    """A Teachable Machine export, its `teachable` preset, augmentation, depth 10: with a new head (another
    class count, the usual case: the head sits in a nested Sequential) and with its own head; exactly the
    head and the top 10 weight layers of MobileNetV2 (BatchNormalization frozen) move."""
    from tlviz.finetune.config import RunConfig
    from tlviz.finetune.run import run_finetune
    from tlviz.unfreeze import unfreeze_plan
    from tlviz.models import load_model

    loaded = load_model(teachable_zip(keras2, "0 a\n1 b\n2 c\n"), "converted_keras.zip")
    if new_head:
        root = _two_class_folder(tmp_path / "set")
    else:
        root = _two_class_folder(tmp_path / "set")
        (root / "c").mkdir()
        for i in range(6):
            Image.fromarray(np.full((48, 64, 3), 90 + i, np.uint8)).save(root / "c" / f"{i}.png")
        (root / "labels.txt").write_text("0 a\n1 b\n2 c\n")
        (root / "mug").rename(root / "a")
        (root / "plant").rename(root / "b")
    images = load_image_set(root, loaded.image_size, loaded.channels, resize="crop")
    config = RunConfig(unfreeze=10, epochs=1, batch_size=4, lr=1e-3, preset="teachable", augment=True,
                       new_head=new_head, use_cache=False, seed=2)
    result = run_finetune(loaded, images, config, save=False)
    assert result.state == "completed"
    assert result.head.new_head == new_head
    plan = unfreeze_plan(loaded.model, 10)
    base_expected = set(plan.loc[(plan["role"] == "base") & plan["would_train"], "path"])
    assert len(base_expected) == len([p for p in base_expected if "/" in p]) > 0  # inside the nested MobileNetV2
    wc = result.weight_change
    moved = set(wc.loc[wc["l2_change"] > 0, "path"])
    head_paths = set(plan.loc[plan["role"] == "head", "path"])
    moved_base = moved - head_paths - {p for p in moved if p.startswith("new_head") or "tlviz_head" in p}
    assert moved_base == base_expected, sorted(moved_base ^ base_expected)
    assert len(moved - moved_base) >= 1  # the head moved too


def test_a_teachable_run_needs_centre_cropped_images(keras2, tmp_path):
    from tlviz.finetune.config import RunConfig, RunRefused
    from tlviz.finetune.preflight import check_run
    from tlviz.models import load_model

    loaded = load_model(teachable_zip(keras2, "0 a\n1 b\n2 c\n"), "converted_keras.zip")
    root = _two_class_folder(tmp_path / "set", n=3)
    squashed = load_image_set(root, loaded.image_size, loaded.channels)  # bilinear: not what the model sees
    with pytest.raises(RunRefused, match="resize='crop'") as exc:
        check_run(loaded, squashed, RunConfig(preset="teachable", new_head=True))
    assert "`tf`" in str(exc.value)  # the preset with the same arithmetic keeps this resize
    check_run(loaded, squashed, RunConfig(preset="tf", new_head=True))
    check_run(loaded, load_image_set(root, loaded.image_size, loaded.channels, resize="crop"),
              RunConfig(preset="teachable", new_head=True))


@pytest.mark.slow
def test_cli_finetune_of_an_export_uses_its_preset_and_its_crop(keras2, tmp_path, capsys):
    """No --preset: the export's own `teachable` preset, images decoded with its centre crop, the run stored so."""
    from tlviz.cli import main

    zpath = tmp_path / "converted_keras.zip"
    zpath.write_bytes(teachable_zip(keras2, "0 a\n1 b\n2 c\n"))
    root = _two_class_folder(tmp_path / "set", n=4)
    rc = main(["finetune", str(zpath), str(root), "--unfreeze", "2", "--lr", "1e-3", "--epochs", "1",
               "--batch-size", "4", "--augment", "--no-cache", "--out", str(tmp_path / "runs"), "--json", "--quiet"])
    obj = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and obj["state"] == "completed", obj
    assert obj["config"]["preset"] == "teachable" and obj["config"]["augment"]
