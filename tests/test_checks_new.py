"""Issue 14's checks: each fires on a planted fault and stays quiet without it.

prediction-collapse, output-loss-mismatch, exif-orientation, duplicate-images and
likely-mislabelled run here on the committed digits sample (32x32), on copies of its
model with a fault planted, on small hand-built models, and on generated JPEGs carrying
EXIF orientation tags. Each test runs only the checks it needs (``checks=[...]``).
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import keras
import numpy as np
import pytest
from PIL import Image

from tlviz.cli import main as cli_main
from tlviz.diagnose import diagnose
from tlviz.diagnose.outoffold import out_of_fold
from tlviz.diagnose.outputs import output_activation, read_loss
from tlviz.duplicates import difference_hash, duplicate_group_ids, find_duplicates
from tlviz.imagesets import load_image_set, open_source
from tlviz.models import load_model, summarize

NEW = ("prediction-collapse", "output-loss-mismatch", "exif-orientation", "duplicate-images", "likely-mislabelled")


def ids(report) -> set[str]:
    return {f.id for f in report.findings}


def finding(report, fid: str):
    found = [f for f in report.findings if f.id == fid]
    assert found, f"{fid} not in {ids(report)}; skipped: {[(s.id, s.reason) for s in report.skipped]}"
    return found[0]


def skipped(report) -> dict[str, str]:
    return {s.id: s.reason for s in report.skipped}


def subset(images, per_class: int, relabel: dict | None = None):
    """The first `per_class` images of each class; `relabel` moves {position in the subset: new label}."""
    keep = np.sort(np.concatenate([np.flatnonzero(images.labels == c)[:per_class]
                                   for c in range(len(images.class_names))]))
    labels = images.labels[keep].copy()
    for pos, new in (relabel or {}).items():
        labels[pos] = new
    return replace(images, images=images.images[keep], labels=labels, files=[images.files[i] for i in keep],
                   original_sizes=[images.original_sizes[i] for i in keep], orientations=[1] * len(keep))


def copy_of(loaded, edit=None):
    """A LoadedModel around a private copy of `loaded`'s model (same weights, same metadata), `edit`ed."""
    m = keras.models.clone_model(loaded.model)
    m.set_weights(loaded.model.get_weights())
    if edit is not None:
        edit(m)
    return summarize(m, filename="copy.keras", metadata=dict(loaded.metadata))


@pytest.fixture(scope="module")
def base_source(digits_0_4):
    return open_source(digits_0_4)


@pytest.fixture(scope="module")
def clean(loaded_base, base_images, base_source):
    """The clean sample, the new checks only: every one of them runs, none fires."""
    return diagnose(loaded_base, base_images, "tf", source=base_source, checks=list(NEW))


def test_the_clean_sample_runs_every_new_check_and_none_fires(clean):
    assert set(clean.checks_run) == set(NEW) and not clean.skipped
    assert not ids(clean) & set(NEW)


# -- prediction-collapse ----------------------------------------------------------------------

def _saturated_head(m):
    """A head that ignores its input and answers class 0 with near certainty (a diverged, collapsed head)."""
    head = m.get_layer("predictions")
    kernel, bias = head.get_weights()
    bias[:] = 0.0
    bias[0] = 8.0
    head.set_weights([np.zeros_like(kernel), bias])


def _dead_base(m):
    """The last block's convolution zeroed and its BN shift removed: the base passes zeros for every image."""
    conv = m.get_layer("block3_conv")
    conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
    bn = m.get_layer("block3_bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, np.zeros_like(beta), np.zeros_like(mean), var])


def test_prediction_collapse_fires_on_a_saturated_head_with_the_interval(loaded_base, base_images):
    report = diagnose(copy_of(loaded_base, _saturated_head), subset(base_images, 40), "tf",
                      checks=["prediction-collapse"])
    f = finding(report, "prediction-collapse")
    e = f.evidence
    assert (f.severity, f.area) == ("error", "finetuning")
    assert e["predicted_class"] == "0" and e["predicted_share"] == 1.0 and e["prediction_histogram"] == {"0": 200}
    assert e["label_share"] == pytest.approx(0.2) and e["excess"] == pytest.approx(0.8)
    assert 0.2 < e["excess_interval"][0] <= 0.8 <= e["excess_interval"][1]
    assert e["mean_confidence"] > 0.99 and e["feature_spread"] > 0.1  # the features are fine: the head saturated
    assert "saturated head" in f.fix and "np.bincount" in f.fix


def test_prediction_collapse_names_a_dead_base_with_or_without_labels(loaded_base, base_images):
    dead = copy_of(loaded_base, _dead_base)
    f = finding(diagnose(dead, subset(base_images, 40), "tf", checks=["prediction-collapse"]), "prediction-collapse")
    assert f.evidence["feature_spread"] < 0.01 and "dead base" in f.fix
    one_folder = replace(subset(base_images, 40), class_names=["photos"],
                         labels=np.zeros(200, dtype=np.int64))
    f = finding(diagnose(dead, one_folder, "tf", checks=["prediction-collapse"]), "prediction-collapse")
    assert "does not depend on the image" in f.title and "label_share" not in f.evidence
    # The same unlabelled folder with the healthy model: no finding (one class can be what the folder holds).
    assert ids(diagnose(loaded_base, one_folder, "tf", checks=["prediction-collapse"])) == set()


def test_prediction_collapse_on_too_few_images_is_a_sentence(loaded_base, base_images):
    # Six images, four of class 0: a model answering 0 for all six exceeds the labels by 33 points, but six
    # images cannot show that the excess clears 20 points.
    few = subset(base_images, 4)
    few = replace(few, images=few.images[:6], labels=np.array([0, 0, 0, 0, 1, 1]), files=few.files[:6],
                  original_sizes=few.original_sizes[:6], orientations=[1] * 6)
    report = diagnose(copy_of(loaded_base, _saturated_head), few, "tf", checks=["prediction-collapse"])
    assert "Too few images to decide" in skipped(report)["prediction-collapse"]


# -- output-loss-mismatch ------------------------------------------------------------------------

def _head_model(units: int, activation, loss=None, separate_softmax: bool = False):
    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inp))
    x = keras.layers.Dropout(0.2)(x)
    if separate_softmax:
        out = keras.layers.Softmax(name="probs")(keras.layers.Dense(units, name="logits")(x))
    else:
        out = keras.layers.Dense(units, activation=activation, name="out")(x)
    model = keras.Model(inp, out)
    if loss is not None:
        model.compile(optimizer="adam", loss=loss)
    return model


LOGITS = True
CASES = [  # units, activation, loss, fires, words in the fix
    (5, "softmax", keras.losses.SparseCategoricalCrossentropy(from_logits=LOGITS), True, "from_logits=False"),
    (5, None, "sparse_categorical_crossentropy", True, "SparseCategoricalCrossentropy(from_logits=True)"),
    (1, "softmax", None, True, 'activation="sigmoid"'),
    (5, "sigmoid", "categorical_crossentropy", True, 'activation="softmax"'),
    (1, "sigmoid", "categorical_crossentropy", True, "binary_crossentropy"),
    (1, "sigmoid", keras.losses.BinaryCrossentropy(from_logits=LOGITS), True, "BinaryCrossentropy(from_logits=False)"),
    (5, "softmax", "sparse_categorical_crossentropy", False, None),
    (5, None, keras.losses.CategoricalCrossentropy(from_logits=LOGITS), False, None),
    (1, "sigmoid", "binary_crossentropy", False, None),
]


@pytest.fixture(scope="module")
def ten(base_images):
    return subset(base_images, 2)


@pytest.mark.parametrize("units,activation,loss,fires,fix", CASES)
def test_output_loss_mismatch_table(units, activation, loss, fires, fix, ten):
    report = diagnose(summarize(_head_model(units, activation, loss)), ten, "tf", checks=["output-loss-mismatch"])
    if fires:
        f = finding(report, "output-loss-mismatch")
        assert (f.severity, f.area) == ("error", "finetuning")
        assert f.evidence["output_layer"] == "out" and f.evidence["units"] == units
        assert f.evidence["measured_on_images"] is False and fix in f.fix
    else:
        assert ids(report) == set() and not report.skipped


def test_output_loss_mismatch_reads_the_files_loss_and_looks_through_a_softmax_layer(tmp_path, ten):
    model = _head_model(5, None, keras.losses.CategoricalCrossentropy(from_logits=True), separate_softmax=True)
    assert output_activation(model) == ("probs", "softmax", 5)
    for name in ("model.keras", "model.h5"):
        model.save(tmp_path / name)
        loaded = load_model(tmp_path / name)  # loaded with compile=False: the loss comes from the file
        assert not loaded.model.compiled and loaded.metadata["saved_loss"]
        f = finding(diagnose(loaded, ten, "tf", checks=["output-loss-mismatch"]), "output-loss-mismatch")
        assert f.evidence["loss_read_from"] == "the file's compile config" and f.evidence["from_logits"] is True
        assert f.evidence["output_layer"] == "probs"


def test_output_loss_mismatch_without_a_saved_loss_is_a_sentence(tmp_path, ten, frozen_model_path):
    report = diagnose(load_model(frozen_model_path), ten, "tf", checks=["output-loss-mismatch"])
    assert "records no loss" in skipped(report)["output-loss-mismatch"]


def test_read_loss_spellings():
    assert read_loss({"module": "builtins", "class_name": "function", "config": "sparse_categorical_crossentropy",
                      "registered_name": "function"}) == ("sparse_categorical_crossentropy", False)
    assert read_loss({"class_name": "BinaryCrossentropy", "config": {"from_logits": True}}) == (
        "binary_crossentropy", True)
    assert read_loss(["bce"]) == ("binary_crossentropy", False)
    assert read_loss({"out": "mse"}) == ("mean_squared_error", False)
    assert read_loss(None) is None


# -- exif-orientation ---------------------------------------------------------------------------------

def _jpeg(pixels: np.ndarray, orientation: int | None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _bright(where: str, rng) -> np.ndarray:
    a = rng.integers(10, 40, (16, 16, 3)).astype(np.uint8)
    rows = slice(0, 8) if where == "top" else slice(8, 16)
    a[rows] = rng.integers(200, 240, (8, 16, 3)).astype(np.uint8)
    return a


def _up_down_model():
    """Class 0 ('down') when the bottom half is brighter than the top, class 1 ('up') otherwise (fixed weights)."""
    inp = keras.Input((16, 16, 3))
    top = keras.layers.GlobalAveragePooling2D()(keras.layers.Cropping2D(((0, 8), (0, 0)))(inp))
    bottom = keras.layers.GlobalAveragePooling2D()(keras.layers.Cropping2D(((8, 0), (0, 0)))(inp))
    diff = keras.layers.Subtract()([top, bottom])
    head = keras.layers.Dense(2, activation="softmax", name="head")
    out = head(diff)
    head.set_weights([np.array([[-5.0, 5.0]] * 3), np.zeros(2)])
    return summarize(keras.Model(inp, out, name="updown"))


def _phone_photos(folder, turned: int, rng):
    """'up' photos (bright top) and 'down' photos (bright bottom) as a phone shows them; `turned` of the 'up' ones
    are stored upside down with EXIF orientation 3 (rotate 180°), as a phone held upside down writes them."""
    for k in range(12):
        for cls in ("up", "down"):
            shown = _bright("top" if cls == "up" else "bottom", rng)
            if cls == "up" and k < turned:
                data = _jpeg(shown[::-1, ::-1].copy(), 3)
            else:
                data = _jpeg(shown, None)
            (folder / cls).mkdir(parents=True, exist_ok=True)
            (folder / cls / f"{cls}_{k:02d}.jpg").write_bytes(data)
    return folder


def test_exif_orientation_counts_the_turned_images_and_compares_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    source = open_source(_phone_photos(tmp_path / "phone", 8, rng))
    images = source.load((16, 16))
    model = _up_down_model()
    f = finding(diagnose(model, images, "raw", source=source, checks=["exif-orientation"]), "exif-orientation")
    e = f.evidence
    assert (f.severity, f.area) == ("warning", "inference")
    assert e["turned_images"] == 8 and e["orientations"] == {"rotated 180°": 8}
    assert e["accuracy_as_loaded"] == 0.0 and e["accuracy_other_way"] == 1.0  # the tag ignored, as Keras does
    assert e["compared_images"] == 8 and e["difference_interval"][0] > 0.5  # the paired 95 % interval
    assert "exif_transpose" in f.fix and "49834" in f.fix
    # Decoded in the worker (no orientations recorded): read from the files again, same result.
    bare = replace(images, orientations=[])
    again = finding(diagnose(model, bare, "raw", source=source, checks=["exif-orientation"]), "exif-orientation")
    assert again.evidence["turned_images"] == 8
    # Neither recorded nor re-openable: a sentence.
    report = diagnose(model, bare, "raw", checks=["exif-orientation"])
    assert "cannot be opened again" in skipped(report)["exif-orientation"]


def test_exif_orientation_is_quiet_without_turned_images(tmp_path):
    source = open_source(_phone_photos(tmp_path / "plain", 0, np.random.default_rng(1)))
    report = diagnose(_up_down_model(), source.load((16, 16)), "raw", source=source, checks=["exif-orientation"])
    assert ids(report) == set() and report.checks_run == ["exif-orientation"]


# -- duplicate-images ------------------------------------------------------------------------------

def _with_copies(images, pairs: list[tuple[int, int]], recompress: bool = False):
    """`images` plus copies: each (source position, label) pair appends a copy of that image under that label."""
    extra = []
    for pos, _ in pairs:
        img = images.images[pos]
        if recompress:  # a near copy: re-saved as a JPEG (quality 95)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=95)
            img = np.asarray(Image.open(buf).convert("RGB"))
        extra.append(img)
    n = len(images)
    return replace(images, images=np.concatenate([images.images, np.stack(extra)]),
                   labels=np.concatenate([images.labels, [lab for _, lab in pairs]]).astype(np.int64),
                   files=images.files + [f"{images.class_names[lab]}/copy_{k}.png" for k, (_, lab) in enumerate(pairs)],
                   original_sizes=images.original_sizes + [(32, 32)] * len(pairs),
                   orientations=[1] * (n + len(pairs)))


def test_duplicate_images_under_two_classes(loaded_base, base_images):
    small = subset(base_images, 40)
    planted = _with_copies(small, [(0, 3), (45, 2)])  # a '0' filed under '3', a '1' under '2'
    f = finding(diagnose(loaded_base, planted, "tf", checks=["duplicate-images"]), "duplicate-images")
    e = f.evidence
    assert (f.severity, f.area) == ("warning", "finetuning")
    assert e["cross_class_groups"] == 2 and e["copies_within_classes"] == 0 and e["exact_groups"] == 2
    assert {(p["class_a"], p["class_b"]) for p in e["pairs"]} == {("0", "3"), ("1", "2")}
    assert all(p["exact"] and p["difference"] == 0.0 for p in e["pairs"])
    assert "GroupShuffleSplit" in f.fix


def test_duplicate_images_within_classes_above_the_leak_share(loaded_base, base_images):
    small = subset(base_images, 40)
    lab = small.labels
    near = _with_copies(small, [(i, int(lab[i])) for i in range(0, 200, 40)], recompress=True)  # 5 of 205
    f = finding(diagnose(loaded_base, near, "tf", checks=["duplicate-images"]), "duplicate-images")
    assert f.evidence["copies_within_classes"] == 5 and f.evidence["cross_class_groups"] == 0
    assert not any(p["exact"] for p in f.evidence["pairs"])  # found as near copies
    one = _with_copies(small, [(0, int(lab[0]))])  # one copy in 201 images: under the 1 % leak share
    assert ids(diagnose(loaded_base, one, "tf", checks=["duplicate-images"])) == set()


def test_duplicate_groups_for_splits_and_the_hash():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (6, 8, 8, 3)).astype(np.uint8)
    photos = np.stack([np.asarray(Image.fromarray(b).resize((96, 96), Image.BICUBIC)) for b in base])
    buf = io.BytesIO()
    Image.fromarray(photos[2]).resize((70, 70)).save(buf, "JPEG", quality=70)
    resized_copy = np.asarray(Image.open(buf).convert("RGB").resize((96, 96), Image.BILINEAR))
    images = np.concatenate([photos, photos[[4]], resized_copy[None]])  # 6 photos, an exact and a near copy
    groups = find_duplicates(images)
    assert [list(g) for g in groups.groups] == [[2, 7], [4, 6]] and groups.exact == [False, True]
    ids_ = duplicate_group_ids(images)
    assert ids_[2] == ids_[7] and ids_[4] == ids_[6] and len(set(ids_)) == 6
    h = difference_hash(images)
    assert h.dtype == np.uint64 and h[4] == h[6]
    flipped = difference_hash(images[:, :, ::-1])
    assert np.all(h[:6] != flipped[:6])  # a mirrored photo is not a copy


# -- likely-mislabelled -------------------------------------------------------------------------

def test_likely_mislabelled_finds_planted_label_errors(loaded_base, base_images):
    small = subset(base_images, 60)
    rng = np.random.default_rng(5)
    moved = rng.choice(len(small), 15, replace=False)  # 5 % of the images filed under another class
    relabel = {int(p): int((small.labels[p] + 1 + rng.integers(0, 4)) % 5) for p in moved}
    planted = subset(base_images, 60, relabel)
    f = finding(diagnose(loaded_base, planted, "tf", checks=["likely-mislabelled"]), "likely-mislabelled")
    e = f.evidence
    assert (f.severity, f.area) == ("warning", "finetuning")
    assert e["n_scored"] == 300 and e["suspects"] >= 8 and e["probe_accuracy_interval"][0] > 0.7
    moved_files = {planted.files[p] for p in moved}
    flagged = [r["file"] for r in e["ranked_suspects"]]
    assert sum(x in moved_files for x in flagged) >= 0.9 * len(flagged)  # the suspects are the moved images
    top = e["ranked_suspects"][0]
    assert top["predicted"] == planted.class_names[int(small.labels[planted.files.index(top["file"])])]
    assert top["confidence"] >= 0.9 and top["label"] != top["predicted"]
    confidences = [r["confidence"] for r in e["ranked_suspects"]]
    assert confidences == sorted(confidences, reverse=True)


def test_likely_mislabelled_reuses_the_features_the_preset_comparison_kept(loaded_base, base_images, monkeypatch):
    """No pass of its own over the images: the comparison's feature tap keeps its images' features too
    (unless they would not fit in `TAP_MB`), and the result is the one a pass of its own gives."""
    import tlviz.diagnose.context as context
    import tlviz.diagnose.probe as probe

    small = subset(base_images, 60)
    rng = np.random.default_rng(5)
    moved = rng.choice(len(small), 15, replace=False)  # 5 % of the images filed under another class
    planted = subset(base_images, 60, {int(p): int((small.labels[p] + 1 + rng.integers(0, 4)) % 5) for p in moved})
    passes = []
    own = probe.layer_features
    monkeypatch.setattr(probe, "layer_features", lambda *a, **k: passes.append(len(a[2])) or own(*a, **k))
    shared = finding(diagnose(loaded_base, planted, "tf", checks=["likely-mislabelled"]), "likely-mislabelled")
    assert passes == []
    monkeypatch.setattr(context, "TAP_MB", 0)  # too big to keep: the probe's sample only, the rest computed
    alone = finding(diagnose(loaded_base, planted, "tf", checks=["likely-mislabelled"]), "likely-mislabelled")
    assert 100 <= sum(passes) < 300  # at most 40 of each class were kept, for the pre-training probe
    a, b = shared.evidence, alone.evidence
    assert a["n_scored"] == b["n_scored"] == 300 and a["suspects"] == b["suspects"]
    assert [r["file"] for r in a["ranked_suspects"]] == [r["file"] for r in b["ranked_suspects"]]
    assert [r["confidence"] for r in a["ranked_suspects"]] == pytest.approx(
        [r["confidence"] for r in b["ranked_suspects"]], abs=1e-4)


def test_likely_mislabelled_needs_a_probe_that_learnt_the_classes(loaded_base, base_images):
    report = diagnose(copy_of(loaded_base, _dead_base), subset(base_images, 30), "tf", checks=["likely-mislabelled"])
    assert "below the 70%" in skipped(report)["likely-mislabelled"]


def test_out_of_fold_folds_keep_copies_together_and_classes_balanced():
    from tlviz.diagnose.outoffold import group_folds

    labels = np.repeat(np.arange(3), 30)
    groups = np.arange(90)
    groups[[1, 2, 40]] = 1  # three copies of one image (two under class 0, one under class 1)
    fold = group_folds(labels, groups, 5)
    assert len(set(fold[[1, 2, 40]])) == 1
    per = np.array([[np.sum((fold == f) & (labels == c)) for c in range(3)] for f in range(5)])
    assert per.min() >= 5 and per.max() <= 7  # stratified: about 6 of each class per fold
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 3, (3, 10))[labels] + rng.normal(0, 1, (90, 10))
    probs = out_of_fold(feats, labels, groups, 3)
    assert probs.shape == (90, 3) and np.allclose(probs.sum(axis=1), 1.0)
    assert np.mean(probs.argmax(axis=1) == labels) > 0.9


# -- reports and the command line -------------------------------------------------------------------

def test_new_findings_reach_the_markdown_json_and_the_cli(tmp_path, loaded_base, base_images, base_model_path,
                                                          digits_0_4, capsys):
    import shutil

    folder = tmp_path / "set"
    for c in base_images.class_names:
        (folder / c).mkdir(parents=True)
        for p in sorted((digits_0_4 / c).glob("*.png"))[:20]:
            shutil.copy(p, folder / c / p.name)
    for k, p in enumerate(sorted((digits_0_4 / "0").glob("*.png"))[:3]):
        shutil.copy(p, folder / "4" / f"copied_{k}.png")  # three '0's filed under '4' as well
    assert cli_main(["diagnose", str(base_model_path), str(folder), "--preset", "tf", "--json", "-q"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    dup = [f for f in out["findings"] if f["id"] == "duplicate-images"]
    assert dup and dup[0]["evidence"]["cross_class_groups"] == 3
    source = open_source(folder)
    report = diagnose(loaded_base, source.load(loaded_base.image_size), "tf", source=source,
                      checks=["duplicate-images"])
    md = report.to_markdown()
    assert "duplicate-images" in md and "cross class groups | 3" in md
    assert report.to_dict()["findings"][0]["evidence"]["pairs"][0]["class_b"] == "4"
    assert load_image_set(folder, (32, 32)).orientations == [1] * 103
