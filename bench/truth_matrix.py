"""How often is the diagnoser right? Precision and recall over a matrix of planted faults.

Run: ``python bench/truth_matrix.py`` (trained models are cached under ``/tmp/tlviz_truth_matrix``, or
``--cache DIR``; the CNN and sample families took 5.8 minutes on two CPU cores with the CNN's models cached,
the three digits families 19 minutes from scratch before the cases of issue 22 were added). ``--quick`` runs
the small CNN family only; ``--family NAME`` and ``--case TEXT`` pick others; ``--json PATH`` writes every
case's findings.

What it does, in this process, with nothing downloaded:

- **Data**: scikit-learn's bundled digits (``tlviz.samples.digit_images``: 8x8 digits drawn as warm
  strokes on a dark background at 32x32 RGB), split once per digit, 60 % to train and 40 % kept for
  the diagnosis (written as PNG folders, loaded with `tlviz.imagesets.load_image_set`, as a user's
  folder would be). All ten digits are the *source* task (the pre-training); digits 5-9 under a new
  5-class head are the *target* task, as a user's classes are often among an ImageNet base's. (With
  digits 0-4 as the source, MobileNetV2's trained features were worse than random ones for digits
  5-9 by an independent logistic-regression probe, 47 % against 77 %: such a base is not a clean
  control.) No held-out target image was seen in any training.
  A second data set, ``sample``: the committed sample's (`tlviz.samples`): digits 0-4 as the source
  task, diagnosed on the 20 % the committed ``digits_base.keras`` was not trained on, and digits 5-9
  (the committed ``digits_5_9`` images) as the target. scikit-image's textures are not used: scikit-image
  is not a dependency of this project, and no installed package ships another labelled image set.
- **Model families**, trained here (seeded, a few epochs, CPU): a small CNN (input prepared with
  ``unit``), a MobileNetV2 (Keras's own architecture, ``alpha=0.35``, ``weights=None``, ``tf``) and a
  ResNet-shaped network (residual blocks with Keras's ResNet layer names, ``torch``). Each is trained
  end to end on the source task (the *trained* model); its features (up to global pooling) then serve
  as the pre-trained base for the target task, following the keras-io transfer-learning guide:
  ``base(inputs, training=False)``, the base frozen while the new head trains (*phase 1*), then
  ``base.trainable = True``, recompiled at ``1e-5`` and trained 2 epochs (*two-phase recipe*; Keras 3
  would pass ``fit``'s ``training=True`` into the base despite the recorded ``training=False``, so the
  recipe trains with `tlviz.callargs.honour_recorded_training`, as the guide means it). The same is
  done on a base with fresh random weights (never trained). The ``sample`` family is the committed
  sample model (the small CNN's architecture, trained with ``tf`` outside the matrix) on the ``sample``
  data set, transferred the same way. Each family also trains its features end to end under a new head
  (a nested base, trainable, called as ``base(inputs)``: its BatchNormalization trains).
- **Cases**: per family, clean controls (the trained model with the right preset and labels on PNG and
  JPEG files, phase 1, the two-phase recipe, the model trained end to end) and one case per fault tlviz
  can plant (each registry check's positive case; see `CASE_TABLE`); ten of them again under the
  family's first wrong preset (`WRONG_PRESET_CASES`, named ``case@preset``); and a model whose first
  BatchNormalization layer stores another preset's statistics with the same function (accuracy and the
  fingerprint then disagree), under the right and under that preset. Each case declares, before
  anything runs, the checks its plant makes true (``planted``) and the consequences a plant may or may
  not cause (``allowed``: not scored for that case, e.g. a model whose BatchNormalization statistics
  were reset may also fall to chance). Everything else must stay quiet.
- **Fine-tuning cases** (`RUN_CASE_TABLE`, per family): ``catastrophic-forgetting`` judges runs, not a
  file, so these cases fine-tune the phase 1 model with tlviz's own runs (`tlviz.finetune.run.run_finetune`)
  and a control (head-only or random-init), store both as the app does, and diagnose with them
  (`tlviz.diagnose.forgetting.with_runs`, as the Diagnose page does). Planted: the whole base at a rate far
  too high for it (Adam 0.1; SGD 1.0). Clean: the guide's low rates (the whole base at 1e-5, the top layers
  at 1e-4). That check is scored on these cases only, and the other checks on the model-file cases only.
- **Scoring**: `tlviz.diagnose.diagnose` runs every check on every model-file case. Error and warning findings
  (the registry's severities, and the ``measured_severity`` an advice is raised to on a measured effect)
  are scored per check and overall: TP / FP / FN / TN, precision and
  recall with 95 % Wilson intervals; a planted check that was skipped is a miss. Info findings are
  reported separately: ``input-resized`` and ``training-mode-inference`` against a structural truth
  (images were resized; the model has a Dropout / noise layer, or a BatchNormalization layer that runs
  in training mode), the two sensitivity checks (resize method, channel order) only counted, since
  what they report is a measurement, not a plant.
- **A reference without tlviz** (`Env.reference`): a logistic regression on the whole train split,
  on the trained base's features and on random ones. A trained base is a negative case for
  ``pretraining-no-better-than-random`` by construction; where this reference finds it no better than
  random features on the task, the claim is arguably true, so the figures with those cases left
  unscored for that check are printed as well (the targets use the main figures).
- **Targets** (issue 13): recall >= 0.95 and precision >= 0.95 overall, no check below 0.9 on either,
  and the clean controls with no error or warning. They are printed as met or not met; the truth is
  never adjusted to the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

#: Bump when the data, the architectures or the training change: cached models of another version are retrained.
VERSION = "3"
SEED = 20261213
SIZE = 32
#: Share of each class kept for the diagnosis (the rest trains).
HELD_OUT = 0.4
#: The source task is every digit (10 classes); the target task is digits 5-9 (5 classes, a new head).
SOURCE_CLASSES = 10
TARGET_FIRST = 5
TARGET_CLASSES = 10 - TARGET_FIRST
#: The committed sample (tlviz.samples): trained outside the matrix on 80 % of digits 0-4 with `tf`.
SAMPLE_MODEL = ROOT / "sample_models" / "digits_base.keras"
DEFAULT_CACHE = Path(os.environ.get("TLVIZ_TRUTH_CACHE", "/tmp/tlviz_truth_matrix"))

#: The check that judges fine-tuning runs (scored on `RUN_CASE_TABLE`'s cases only).
FORGETTING = "catastrophic-forgetting"
#: Checks that judge fine-tuning runs, not a model file: scored on the fine-tuning cases, and only there.
RUN_CHECKS = (FORGETTING,)

TARGET_OVERALL = 0.95
TARGET_PER_CHECK = 0.9


# -- families ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """One model family: how its network is built and trained.

    Attributes:
        name: short name (cache folder, case names).
        preset: the preset its training images were prepared with (outside the model).
        wrong_presets: two other presets, each a planted normalization mismatch.
        body: ``body(x) -> features`` builds the network from an input tensor up to global pooling
            (a layer named ``avg_pool``).
        dropout: whether the head has a Dropout layer.
        epochs: end-to-end epochs on the source task (then 2 more at a tenth of the rate).
        lr: the end-to-end learning rate.
        data: the data set (a key of `DATASETS`). Defaults to ``"digits"``.
        trained_file: a model trained outside the matrix, used as the trained model instead of training
            one (its architecture must be `body` with the `_flat` head). Defaults to None.
    """

    name: str
    preset: str
    wrong_presets: tuple[str, str]
    body: Callable
    dropout: bool
    epochs: int
    lr: float
    data: str = "digits"
    trained_file: Path | None = None


def _cnn_body(x):
    from tlviz.samples import conv_body  # the committed sample's architecture

    return conv_body(x)


def _mobilenet_body(x):
    import keras

    app = keras.applications.MobileNetV2(input_tensor=x, alpha=0.35, include_top=False, weights=None)
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(app.output)


def _residual_block(x, filters: int, stride: int, name: str):
    from keras import layers

    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_0_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    y = layers.BatchNormalization(name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _resnet_body(x):
    from keras import layers

    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    for stage, (filters, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=2):
        for block in (1, 2):
            x = _residual_block(x, filters, stride if block == 1 else 1, f"conv{stage}_block{block}")
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("cnn", "unit", ("raw", "tf"), _cnn_body, dropout=True, epochs=12, lr=2e-3),
    Family("mobilenetv2", "tf", ("unit", "caffe"), _mobilenet_body, dropout=True, epochs=25, lr=2e-3),
    Family("resnet", "torch", ("raw", "caffe"), _resnet_body, dropout=False, epochs=12, lr=2e-3),
    # The committed sample model and its data set: digits 0-4 as the source task (the sample's own
    # held-out 20 %), digits 5-9 (the committed `digits_5_9` set) as the target; trained with `tf` by
    # `tlviz.samples`, not by this script.
    Family("sample", "tf", ("raw", "unit"), _cnn_body, dropout=True, epochs=0, lr=2e-3, data="sample",
           trained_file=SAMPLE_MODEL),
)}
QUICK_FAMILIES = ("cnn",)


# -- data ---------------------------------------------------------------------------------------

def _split_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train / held-out images of the source (digits 0-9, labels 0-9) and target (digits 5-9, labels 0-4) tasks.

    One split per digit serves both tasks, so no held-out target image was seen in the source training.
    """
    from tlviz.samples import digit_images

    images, digits = digit_images()
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits == d))
        n_test = int(round(HELD_OUT * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    out = {}
    for task, first in (("source", 0), ("target", TARGET_FIRST)):
        tr = np.sort(np.concatenate(train[first:]))
        te = np.sort(np.concatenate(test[first:]))
        out[f"{task}_train"] = (images[tr], digits[tr] - first)
        out[f"{task}_test"] = (images[te], digits[te] - first)
        out[f"{task}_names"] = [str(d) for d in range(first, 10)]
    return out


def _split_sample() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The committed sample's data set: source digits 0-4 (labels 0-4), target digits 5-9 (labels 0-4).

    The source split is the one `tlviz.samples.build` trained the committed model on (80 % of digits 0-4,
    seeded), so the source held-out images are the 20 % it never saw; the target (the images of the committed
    ``digits_5_9`` folder) is split per digit, `HELD_OUT` kept for the diagnosis.
    """
    from tlviz.samples import SEED as SAMPLE_SEED
    from tlviz.samples import digit_images

    images, digits = digit_images()
    sel = np.flatnonzero(digits < 5)
    order = np.random.default_rng(SAMPLE_SEED).permutation(len(sel))
    n_train = int(0.8 * len(sel))
    tr, te = np.sort(sel[order[:n_train]]), np.sort(sel[order[n_train:]])
    out = {"source_train": (images[tr], digits[tr]), "source_test": (images[te], digits[te]),
           "source_names": [str(d) for d in range(5)]}
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for d in range(5, 10):
        idx = rng.permutation(np.flatnonzero(digits == d))
        n_test = int(round(HELD_OUT * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    tr, te = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    out.update({"target_train": (images[tr], digits[tr] - 5), "target_test": (images[te], digits[te] - 5),
                "target_names": [str(d) for d in range(5, 10)]})
    return out


#: The data sets: each gives ``{source,target}_{train,test}`` as ``(images, labels)`` and ``{source,target}_names``.
DATASETS: dict[str, Callable] = {"digits": _split_digits, "sample": _split_sample}


def _write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str],
                  size: int = SIZE, labels_txt: list[str] | None = None) -> Path:
    """A class-per-folder image set (PNG); `size` other than 32 writes resized images; a `labels_txt` order."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    for k, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == k):
            img = Image.fromarray(images[i], "RGB")
            if size != SIZE:
                img = img.resize((size, size), Image.BILINEAR)
            img.save(folder / name / f"{name}_{i:04d}.png")
    if labels_txt is not None:
        (folder / "labels.txt").write_text("\n".join(labels_txt) + "\n")
    done.write_text("ok\n")
    return folder


#: Images per class filed under a wrong class in the ``likely-mislabelled`` plant (about 8 % of each class).
MISLABELLED_PER_CLASS = 6
#: Every `TURN_EVERY`-th image of the ``exif-orientation`` plant is stored turned, with the EXIF tag that turns it back.
TURN_EVERY = 3
#: EXIF orientation 6: "turn 90 degrees clockwise to show" (PIL's `ImageOps.exif_transpose` applies it).
EXIF_ORIENTATION_TAG, EXIF_ROTATE_CW = 0x0112, 6


def _write_jpegs(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str], turned: bool) -> Path:
    """A class-per-folder JPEG image set (quality 95); with `turned`, every `TURN_EVERY`-th image is stored
    turned a quarter anticlockwise with EXIF orientation 6, so that a viewer that applies the tag shows it
    upright, while a loader that ignores the tag (Keras's ``load_img``) sees it on its side."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    for k, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == k)):
            img = Image.fromarray(images[i], "RGB")
            exif = Image.Exif()
            if turned and n % TURN_EVERY == 0:
                img = img.transpose(Image.Transpose.ROTATE_90)
                exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_CW
            img.save(folder / name / f"{name}_{i:04d}.jpg", quality=95, exif=exif)
    done.write_text("ok\n")
    return folder


# -- training ------------------------------------------------------------------------------------

def _seed() -> None:
    import keras

    keras.utils.set_random_seed(SEED)


def _settle_bn(model, momentum: float = 0.9) -> None:
    """Lower every BatchNormalization momentum, so that a short run's moving statistics settle."""
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _preprocessing_layers(preset: str) -> list:
    """Keras layers that compute `preset` inside a model (for the double-normalization plant)."""
    from keras import layers

    from tlviz.presets import apply_preset

    lo = apply_preset(np.zeros((1, 1, 1, 3), np.uint8), preset).reshape(3).astype(np.float64)
    hi = apply_preset(np.full((1, 1, 1, 3), 255, np.uint8), preset).reshape(3).astype(np.float64)
    if preset == "unit":
        return [layers.Rescaling(1 / 255.0, name="rescale")]
    if preset == "tf":
        return [layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")]
    if preset == "torch":  # (x / 255 - mean) / std, read off the preset itself
        std = 1.0 / (hi - lo)
        mean = -lo * std
        return [layers.Rescaling(1 / 255.0, name="rescale"),
                layers.Normalization(mean=mean.tolist(), variance=(std ** 2).tolist(), name="normalize")]
    raise ValueError(f"No in-model layers for preset {preset!r}.")


def _flat(family: Family, inside: str | None = None, name: str | None = None, n_out: int = SOURCE_CLASSES):
    """The family's network with a new head, as one flat model (optionally normalizing inside)."""
    import keras

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = inp
    for layer in _preprocessing_layers(inside) if inside else []:
        x = layer(x)
    x = family.body(x)
    if family.dropout:
        x = keras.layers.Dropout(0.2, name="dropout")(x)
    out = keras.layers.Dense(n_out, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name=name or f"{family.name}_trained")


def _transfer(base, family: Family, pinned: bool = True, name: str = "", n_out: int = TARGET_CLASSES):
    """The keras-io guide's model: ``base(inputs, training=False)`` (`pinned`), a new head."""
    import keras

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = base(inp, training=False) if pinned else base(inp)
    if family.dropout:
        x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    out = keras.layers.Dense(n_out, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name=name or f"{family.name}_transfer")


def _base_of(flat, family: Family, random: bool = False):
    """A copy of the trained model's features (up to ``avg_pool``) as a nested base model."""
    import keras

    sub = keras.Model(flat.inputs[0], flat.get_layer("avg_pool").output)
    _seed()
    clone = keras.models.clone_model(sub)
    if not random:
        clone.set_weights(sub.get_weights())
    return keras.Model(clone.inputs[0], clone.outputs[0], name=f"{family.name}_base")


def _fit(model, data, preset: str, lr: float, epochs: int) -> None:
    import keras

    from tlviz.presets import apply_preset

    x, y = data
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(apply_preset(x, preset), y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)


def _accuracy(model, data, preset: str) -> float:
    from tlviz.presets import apply_preset

    x, y = data
    p = model.predict(apply_preset(x, preset), batch_size=128, verbose=0)
    return float(np.mean(np.argmax(p, axis=1) == y))


MODEL_KINDS = ("trained", "inside", "phase1", "recipe", "random_phase1", "random_recipe", "end_to_end")


class Env:
    """One family's data, image folders and trained models (trained on first use, cached on disk).

    Args:
        family: the `Family`.
        cache: the cache folder. Defaults to `DEFAULT_CACHE`.
        log: ``log(text)`` for progress. Defaults to print.
    """

    def __init__(self, family: Family, cache: Path = DEFAULT_CACHE, log=print):
        import keras

        self.family = family
        self.dir = Path(cache) / f"v{VERSION}-keras{keras.__version__}" / family.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.images_dir = Path(cache) / (f"v{VERSION}-images" + ("" if family.data == "digits" else f"-{family.data}"))
        self.log = log
        self.data = DATASETS[family.data]()
        self.facts: dict = {}
        facts = self.dir / "facts.json"
        if facts.exists():
            self.facts = json.loads(facts.read_text())

    # images --------------------------------------------------------------------------------
    def folder(self, which: str) -> Path:
        """``source`` / ``target`` held-out folders, ``source_labels_shuffled`` (a labels.txt in another
        order), ``source_24px`` (the images stored at 24x24)."""
        d = self.data
        if which in ("source", "target"):
            x, y = d[f"{which}_test"]
            return _write_folder(self.images_dir / which, x, y, d[f"{which}_names"])
        if which == "source_labels_shuffled":
            x, y = d["source_test"]
            names = d["source_names"]
            order = names[1:] + names[:1]  # no class stays at its position
            return _write_folder(self.images_dir / which, x, y, names, labels_txt=order)
        if which == "source_24px":
            x, y = d["source_test"]
            return _write_folder(self.images_dir / which, x, y, d["source_names"], size=24)
        if which in ("source_jpeg", "source_exif"):
            x, y = d["source_test"]
            return _write_jpegs(self.images_dir / which, x, y, d["source_names"], turned=which == "source_exif")
        if which == "source_duplicates":
            x, y = d["source_test"]
            src = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(len(d["source_names"]))])
            # two images of each class copied, byte for byte, into the next class's folder
            x2 = np.concatenate([x, x[src]])
            y2 = np.concatenate([y, (y[src] + 1) % len(d["source_names"])])
            return _write_folder(self.images_dir / which, x2, y2, d["source_names"])
        if which == "source_mislabelled":
            x, y = d["source_test"]
            y2 = y.copy()
            rng = np.random.default_rng(SEED + 2)
            for c in range(len(d["source_names"])):  # 6 images of each class filed under another class
                moved = rng.choice(np.flatnonzero(y == c), MISLABELLED_PER_CLASS, replace=False)
                y2[moved] = (c + 1 + rng.integers(0, len(d["source_names"]) - 1, len(moved))) % len(d["source_names"])
            return _write_folder(self.images_dir / which, x, y2, d["source_names"])
        raise KeyError(which)

    def saved(self, model, name: str):
        """`model` written to a ``.keras`` file and read back as a user's upload (its compile config kept)."""
        from tlviz.models import load_model

        path = self.dir / "planted" / f"{name}.keras"
        path.parent.mkdir(exist_ok=True)
        model.save(path)
        return load_model(path)

    def images(self, which: str):
        """``(ImageSet, ImageSource)`` of a folder, decoded at 32x32 as `diagnose` expects."""
        from tlviz.imagesets import open_source

        source = open_source(self.folder(which))
        return source.load((SIZE, SIZE), 3), source

    # reference ------------------------------------------------------------------------------
    def reference(self) -> dict:
        """Do the trained base's features beat random ones? A reference measured without tlviz.

        A logistic regression (scikit-learn, standardized features) is trained on each task's whole
        train split and scored on its held-out split, once on the trained model's features (at
        ``avg_pool``) and once on a copy of the architecture with fresh random weights. Not used by
        the scoring's main figures (a trained base is a negative case for
        ``pretraining-no-better-than-random`` by construction); printed, and used for the figures
        that leave out the cases where the trained base is no better than random by this reference.

        Returns:
            ``{task: {"trained": accuracy, "random": accuracy}}`` for ``source`` and ``target``.
        """
        if "reference" in self.facts:
            return self.facts["reference"]
        import keras
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        trained = keras.models.load_model(self.path("trained"))
        features = keras.Model(trained.inputs[0], trained.get_layer("avg_pool").output)
        out = {}
        for which, random in (("trained", False), ("random", True)):
            keras.utils.set_random_seed(SEED + 1)
            model = keras.models.clone_model(features)
            if not random:
                model.set_weights(features.get_weights())
            for task in ("source", "target"):
                (xtr, ytr), (xte, yte) = self.data[f"{task}_train"], self.data[f"{task}_test"]
                ftr = model.predict(_prep(xtr, self.family.preset), verbose=0)
                fte = model.predict(_prep(xte, self.family.preset), verbose=0)
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(ftr, ytr)
                out.setdefault(task, {})[which] = round(float(clf.score(fte, yte)), 4)
        self.facts["reference"] = out
        (self.dir / "facts.json").write_text(json.dumps(self.facts, indent=2) + "\n")
        return out

    def base_no_better_than_random(self, task: str) -> bool:
        """Whether the reference finds the trained base's features no better than random ones on `task`."""
        ref = self.reference()[task]
        return ref["trained"] <= ref["random"]

    # models ---------------------------------------------------------------------------------
    def path(self, kind: str) -> Path:
        if kind not in MODEL_KINDS:
            raise KeyError(kind)
        p = self.dir / f"{kind}.keras"
        if not p.exists():
            self._train(kind)
        return p

    def load(self, kind: str):
        """A fresh `LoadedModel` of one of `MODEL_KINDS`, read from its file as a user's would be."""
        from tlviz.models import load_model

        return load_model(self.path(kind))

    def _save(self, model, kind: str, accuracy: float, data: str) -> None:
        model.save(self.dir / f"{kind}.keras")
        self.facts[kind] = {"held_out_accuracy": round(accuracy, 4), "on": data}
        (self.dir / "facts.json").write_text(json.dumps(self.facts, indent=2) + "\n")

    def _train(self, kind: str) -> None:
        import keras

        f, d = self.family, self.data
        n_source, n_target = len(d["source_names"]), len(d["target_names"])
        t0 = time.perf_counter()
        if kind == "trained" and f.trained_file is not None:  # trained outside the matrix: used as it is
            import shutil

            shutil.copyfile(f.trained_file, self.dir / "trained.keras")
            model = keras.models.load_model(self.dir / "trained.keras")
            self.facts[kind] = {"held_out_accuracy": round(_accuracy(model, d["source_test"], f.preset), 4),
                                "on": f"source, {f.preset} (the committed {f.trained_file.name})"}
            (self.dir / "facts.json").write_text(json.dumps(self.facts, indent=2) + "\n")
        elif kind == "end_to_end":
            # The pre-trained features as a nested base, trainable and called as base(inputs) (its
            # BatchNormalization trains), under a new head: the whole model trained end to end on the target.
            trained = keras.models.load_model(self.path("trained"))
            base = _base_of(trained, f)
            base.trainable = True
            _seed()
            model = _transfer(base, f, pinned=False, name=f"{f.name}_end_to_end", n_out=n_target)
            _settle_bn(model)
            _fit(model, d["target_train"], f.preset, 3e-4, 8)
            self._save(model, kind, _accuracy(model, d["target_test"], f.preset), f"target, {f.preset}")
        elif kind in ("trained", "inside"):
            if kind == "inside":  # the same weights behind in-model preprocessing
                trained = keras.models.load_model(self.path("trained"))
                model = _flat(f, inside=f.preset, name=f"{f.name}_normalizes_inside", n_out=n_source)
                for layer in trained.layers:
                    if layer.weights:
                        model.get_layer(layer.name).set_weights(layer.get_weights())
                self._save(model, kind, _accuracy(model, d["source_test"], "raw"), "source, raw pixels")
                return
            _seed()
            model = _flat(f, n_out=n_source)
            _settle_bn(model)
            _fit(model, d["source_train"], f.preset, f.lr, f.epochs)
            model.optimizer.learning_rate.assign(f.lr / 10)
            model.fit(_prep(d["source_train"][0], f.preset), d["source_train"][1], epochs=2, batch_size=32,
                      verbose=0)
            self._save(model, kind, _accuracy(model, d["source_test"], f.preset), f"source, {f.preset}")
        else:
            random = kind.startswith("random")
            phase1_kind = "random_phase1" if random else "phase1"
            if kind.endswith("recipe"):
                model = keras.models.load_model(self.path(phase1_kind))
                base = model.get_layer(f"{f.name}_base")
                base.trainable = True  # the guide's phase 2: unfreeze, recompile at 1e-5, train briefly
                # Keras 3 passes fit's training=True into the base despite the recorded training=False, so
                # its BatchNormalization would re-estimate its statistics under a head trained on the old
                # ones; the guide's intent (tf.keras 2's behaviour) is kept with tlviz's own helper.
                from tlviz.callargs import honour_recorded_training

                honour_recorded_training(model)
                _fit(model, d["target_train"], f.preset, 1e-5, 2)
            else:
                trained = keras.models.load_model(self.path("trained"))
                base = _base_of(trained, f, random=random)
                base.trainable = False  # phase 1: the base frozen, the new head trains
                _seed()
                model = _transfer(base, f, name=f"{f.name}_{'random_base' if random else 'transfer'}",
                                  n_out=n_target)
                _fit(model, d["target_train"], f.preset, 3e-3, 20)
            self._save(model, kind, _accuracy(model, d["target_test"], f.preset), f"target, {f.preset}")
        self.log(f"  trained {f.name}/{kind} in {time.perf_counter() - t0:.0f} s "
                 f"(held-out accuracy {self.facts[kind]['held_out_accuracy']:.1%})")


def _prep(x, preset):
    from tlviz.presets import apply_preset

    return apply_preset(x, preset)


# -- cases -----------------------------------------------------------------------------------------

@dataclass
class Case:
    """One planted fault (or clean control) on one family.

    Attributes:
        family / name: where it belongs and what it plants.
        planted: the error / warning check ids the plant makes true (a clean control: none).
        setup: ``setup(env) -> (loaded_model, image_set, inference_preset, source)``.
        allowed: checks the plant may or may not cause as a consequence: not scored on this case.
        clean: a clean control (the targets ask for zero errors and warnings on these).
        resized: the images had to be resized (``input-resized``'s truth).
        why: one line on the plant.
        task: ``source`` (the trained model's own digits 0-9) or ``target`` (digits 5-9, a transfer model).
        random_base: the model's base was never trained.
    """

    family: str
    name: str
    planted: frozenset
    setup: Callable
    allowed: frozenset = frozenset()
    clean: bool = False
    resized: bool = False
    why: str = ""
    task: str = "source"
    random_base: bool = False
    #: a fine-tuning case: ``(RunConfig settings, control kind)``; None: a model-file case
    run: tuple | None = None

    @property
    def label(self) -> str:
        return f"{self.family}/{self.name}"

    def scores(self, check_id: str) -> bool:
        """Whether `check_id` is scored on this case: run-judging checks on fine-tuning cases, the rest on files."""
        return (check_id in RUN_CHECKS) == (self.run is not None)


def _summarize(loaded, model=None):
    """A `LoadedModel` after the model was changed in place (or for a new `model`)."""
    from tlviz.models import summarize

    model = loaded.model if model is None else model
    return summarize(model, filename=loaded.filename, metadata=loaded.metadata)


def _in_memory_subset(images, per_class: dict[int, int]):
    """The first ``per_class[c]`` images of class c (classes missing from the dict: all)."""
    keep = []
    for c in range(len(images.class_names)):
        keep += list(np.flatnonzero(images.labels == c)[:per_class.get(c, 10 ** 9)])
    keep = np.array(sorted(keep))
    return replace(images, images=images.images[keep], labels=images.labels[keep],
                   files=[images.files[i] for i in keep],
                   original_sizes=[images.original_sizes[i] for i in keep] if images.original_sizes else [])


def _drop_class(images, drop: int):
    keep = np.flatnonzero(images.labels != drop)
    names = [n for i, n in enumerate(images.class_names) if i != drop]
    remap = np.array([i - (i > drop) for i in range(len(images.class_names))])
    return replace(images, images=images.images[keep], labels=remap[images.labels[keep]], class_names=names,
                   files=[images.files[i] for i in keep],
                   original_sizes=[images.original_sizes[i] for i in keep] if images.original_sizes else [])


def _numpy(variable) -> np.ndarray:
    import keras

    return np.array(keras.ops.convert_to_numpy(variable))


def _bn_layers(model):
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _weighted_convs(model):
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]


# The setups: each returns (loaded model, image set, inference preset, image source or None).

def _clean_trained(env):
    images, source = env.images("source")
    return env.load("trained"), images, env.family.preset, source


def _clean_phase1(env):
    images, source = env.images("target")
    return env.load("phase1"), images, env.family.preset, source


def _clean_recipe(env):
    images, source = env.images("target")
    return env.load("recipe"), images, env.family.preset, source


def _nonfinite(env):
    loaded = env.load("trained")
    conv = _weighted_convs(loaded.model)[len(_weighted_convs(loaded.model)) // 2]
    w = _numpy(conv.kernel)
    w.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    conv.kernel.assign(w)
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def _all_frozen(env):
    loaded = env.load("phase1")
    loaded.model.trainable = False
    images, source = env.images("target")
    return _summarize(loaded), images, env.family.preset, source


def _head_frozen(env):
    loaded = env.load("trained")
    loaded.model.get_layer("predictions").trainable = False
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def _trainable_inside_frozen(env):
    loaded = env.load("phase1")  # the base is frozen (trainable=False) ...
    base = loaded.model.get_layer(f"{env.family.name}_base")
    for conv in _weighted_convs(base)[-2:]:  # ... and its two top convolutions set trainable afterwards
        conv.trainable = True
    images, source = env.images("target")
    return _summarize(loaded), images, env.family.preset, source


def _bn_trainable_unpinned(env):
    """Phase 1's weights, but the base called as ``base(inputs)`` (not pinned) and unfrozen."""
    import keras

    loaded = env.load("phase1")
    old = loaded.model.get_layer(f"{env.family.name}_base")
    clone = keras.models.clone_model(old)
    clone.set_weights(old.get_weights())
    base = keras.Model(clone.inputs[0], clone.outputs[0], name=old.name)
    base.trainable = False  # the clone starts "trainable" with frozen layers; False then True reaches them all
    base.trainable = True
    model = _transfer(base, env.family, pinned=False, name=f"{env.family.name}_unpinned")
    model.get_layer("head").set_weights(loaded.model.get_layer("head").get_weights())
    images, source = env.images("target")
    return _summarize(loaded, model), images, env.family.preset, source


def _bn_trainable_stats_off(env):
    """The model trained end to end (nested base, trainable BatchNormalization, ``base(inputs)``), its last
    BatchNormalization layer's moving mean moved 3 standard deviations with beta compensating: inference is
    unchanged, but `fit` normalizes with batch statistics and shifts that layer's output by 3 gamma."""
    loaded = env.load("end_to_end")
    bn = _bn_layers(loaded.model.get_layer(f"{env.family.name}_base"))[-1]
    if not bn.center:
        raise ValueError(f"{bn.name} has no beta to compensate with.")
    std = np.sqrt(_numpy(bn.moving_variance).astype(np.float64) + bn.epsilon)
    gamma = _numpy(bn.gamma).astype(np.float64) if bn.scale else np.ones_like(std)
    bn.moving_mean.assign((_numpy(bn.moving_mean) + 3.0 * std).astype(np.float32))
    bn.beta.assign((_numpy(bn.beta) + 3.0 * gamma).astype(np.float32))
    images, source = env.images("target")
    return _summarize(loaded), images, env.family.preset, source


def _bn_trainable_partly_frozen(env):
    """The trained model with its lower convolutions frozen and every BatchNormalization left trainable."""
    loaded = env.load("trained")
    convs = _weighted_convs(loaded.model)
    for conv in convs[: len(convs) // 2]:
        conv.trainable = False
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def _class_count(env):
    images, _ = env.images("target")
    return env.load("phase1"), _drop_class(images, 4), env.family.preset, None


def _imbalance(env):
    """One class cut to 21 images: the trained model on its own held-out digits, or the transfer model on the
    target task's where the source classes hold too few images for a ratio above 3 (the sample's 20 %)."""
    images, _ = env.images("source")
    model = "trained"
    if min(images.counts.values()) < 64:
        images, _ = env.images("target")
        model = "phase1"
    return env.load(model), _in_memory_subset(images, {1: 21}), env.family.preset, None


def _too_few(env):
    images, _ = env.images("source")
    per_class = {c: 15 for c in range(len(images.class_names))}
    return env.load("trained"), _in_memory_subset(images, per_class), env.family.preset, None


def _label_order(env):
    """labels.txt in another order than the model's outputs; a model that records its class names (the
    committed sample) is matched by name, so the names are left out, as a file saved without them is."""
    from tlviz.models import summarize

    images, source = env.images("source_labels_shuffled")
    loaded = env.load("trained")
    metadata = {k: v for k, v in (loaded.metadata or {}).items() if k != "class_names"}
    return summarize(loaded.model, filename=loaded.filename, metadata=metadata), images, env.family.preset, source


def _wrong_preset(k: int):
    def setup(env):
        images, source = env.images("source")
        return env.load("trained"), images, env.family.wrong_presets[k], source
    return setup


def _double_normalization(env):
    images, source = env.images("source")
    return env.load("inside"), images, env.family.preset, source


def _bn_perturbed(env):
    """Moving statistics of every BatchNormalization layer but the first shifted by 3 std and scaled by 16."""
    loaded = env.load("trained")
    for bn in _bn_layers(loaded.model)[1:]:
        std = np.sqrt(_numpy(bn.moving_variance))
        bn.moving_mean.assign(_numpy(bn.moving_mean) + 3.0 * std)
        bn.moving_variance.assign(_numpy(bn.moving_variance) * 16.0)
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def _bn_reset(env):
    """Every BatchNormalization layer's moving statistics reset to their initial values (mean 0, variance 1)."""
    loaded = env.load("trained")
    for bn in _bn_layers(loaded.model):
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, np.float32))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, np.float32))
    images, source = env.images("source")
    return _summarize(loaded), images, env.family.preset, source


def _random_phase1(env):
    images, source = env.images("target")
    return env.load("random_phase1"), images, env.family.preset, source


def _random_recipe(env):
    images, source = env.images("target")
    return env.load("random_recipe"), images, env.family.preset, source


def _untrained_head(env):
    """Phase 1's trained base under a head that was never trained (a zero kernel: one answer for all)."""
    loaded = env.load("phase1")
    head = loaded.model.get_layer("head")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.resize(np.array([0.3, 0.1, 0.0, 0.2, 0.0], np.float32), head.bias.shape))
    images, source = env.images("target")
    return _summarize(loaded), images, env.family.preset, source


def _output_loss(env):
    """The trained softmax model recompiled with ``from_logits=True`` (and saved, as a user's file holds it)."""
    import keras

    model = env.load("trained").model
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    images, source = env.images("source")
    return env.saved(model, "output_loss"), images, env.family.preset, source


def _images_of(which: str):
    def setup(env):
        images, source = env.images(which)
        return env.load("trained"), images, env.family.preset, source
    setup.__name__ = f"_images_{which}"
    return setup


def _resized(env):
    images, source = env.images("source_24px")
    return env.load("trained"), images, env.family.preset, source


def _clean_end_to_end(env):
    images, source = env.images("target")
    return env.load("end_to_end"), images, env.family.preset, source


#: The preset whose statistics the ``fingerprint-fooled`` plant stores in the first BatchNormalization layer
#: (far from every family's training preset).
FOOLED_TOWARD = "raw"


def _fooled(user_preset: str | None):
    """The trained model, whose first BatchNormalization layer now stores the mean and variance of its input
    under `FOOLED_TOWARD` (measured on the held-out images), with gamma and beta changed so that the layer
    computes exactly what it did: the same model, but the label-free fingerprint points at `FOOLED_TOWARD`
    while accuracy points at the training preset. `user_preset` None: the family's own."""
    def setup(env):
        import keras

        from tlviz.presets import apply_preset

        loaded = env.load("trained")
        model = loaded.model
        images, source = env.images("source")
        bn = _bn_layers(model)[0]
        before = keras.Model(model.inputs[0], bn.input)
        axis = bn.axis[0] if isinstance(bn.axis, (list, tuple)) else bn.axis
        acts = np.moveaxis(before.predict(apply_preset(images.images, FOOLED_TOWARD), verbose=0), axis, -1)
        acts = acts.reshape(-1, acts.shape[-1]).astype(np.float64)
        mean2, var2 = acts.mean(axis=0), acts.var(axis=0)
        mean, var = _numpy(bn.moving_mean).astype(np.float64), _numpy(bn.moving_variance).astype(np.float64)
        s, s2 = np.sqrt(var + bn.epsilon), np.sqrt(var2 + bn.epsilon)
        if not (bn.scale and bn.center):
            raise ValueError(f"{bn.name} has no gamma and beta to compensate with.")
        gamma = _numpy(bn.gamma).astype(np.float64)
        bn.gamma.assign((gamma * s2 / s).astype(np.float32))  # y = gamma (x - mean) / s + beta, unchanged
        bn.beta.assign((_numpy(bn.beta) + gamma * (mean2 - mean) / s).astype(np.float32))
        bn.moving_mean.assign(mean2.astype(np.float32))
        bn.moving_variance.assign(var2.astype(np.float32))
        return _summarize(loaded), images, user_preset or env.family.preset, source
    setup.__name__ = f"_fooled_{user_preset or 'own'}"
    return setup


_F = frozenset
#: A model whose accuracy collapses may fall to chance, under the user's preset too; a base whose statistics
#: are broken may probe no better than a random one. Consequences, not plants: not scored on the cases that
#: cause them.
_COLLAPSE = _F({"no-better-than-chance", "pretraining-no-better-than-random", "prediction-collapse",
                "inference-preset-fails"})

#: (name, planted, setup, allowed, clean, resized, why): the same cases for every family.
CASE_TABLE = (
    ("clean/trained", _F(), _clean_trained, _F(), True, False,
     "the trained model, its own preset, labels in output order"),
    ("clean/phase1-frozen-base", _F(), _clean_phase1, _F(), True, False,
     "keras-io guide phase 1: base(x, training=False), base frozen, new head trained"),
    ("clean/two-phase-recipe", _F(), _clean_recipe, _F(), True, False,
     "keras-io guide: then base.trainable = True, recompiled at 1e-5, trained 2 epochs"),
    ("weights-not-finite", _F({"weights-not-finite"}), _nonfinite, _F(), False, False,
     "NaN, +inf and -inf in a convolution kernel"),
    ("every-layer-frozen", _F({"no-trainable-weights"}), _all_frozen, _F(), False, False,
     "phase 1 model with model.trainable = False"),
    ("head-frozen", _F({"head-frozen"}), _head_frozen, _F(), False, False,
     "the trained model's Dense head set trainable=False, the rest trainable"),
    ("trainable-inside-frozen-base", _F({"trainable-inside-frozen-model"}), _trainable_inside_frozen, _F(),
     False, False, "phase 1 (base frozen), then two convolutions inside the base set trainable"),
    # bn-trainable-in-base is advice (info) read from the file, and a warning only when batch statistics, as
    # fit runs them, measurably cost accuracy: the two structural plants expect the advice, no warning; the
    # third plants the effect.
    ("bn-trainable/unpinned-base", _F(), _bn_trainable_unpinned, _F(), False, False,
     "base(inputs) without training=False, base.trainable = True (advice only: no effect planted)"),
    ("bn-trainable/partly-frozen", _F(), _bn_trainable_partly_frozen, _F(), False,
     False, "lower half of the convolutions frozen, every BatchNormalization trainable (advice only)"),
    ("bn-trainable/moving-mean-off", _F({"bn-trainable-in-base"}), _bn_trainable_stats_off, _F(), False, False,
     "the end-to-end model (nested base, trainable BN, base(inputs)), its last BN's moving mean 3 std off with "
     "beta compensating: inference unchanged, training-mode batch statistics shift that layer by 3 gamma"),
    ("class-count-mismatch", _F({"class-count-mismatch"}), _class_count, _F(), False, False,
     "4 class folders for a 5-output model"),
    ("class-imbalance", _F({"class-imbalance"}), _imbalance, _F(), False, False,
     "one class cut to 21 images, the largest keeps about 72 (ratio > 3, every class >= 20)"),
    ("too-few-images", _F({"too-few-images"}), _too_few, _F(), False, False,
     "15 images in every class (balanced)"),
    ("label-order/labels.txt", _F({"label-order-mismatch"}), _label_order, _F(), False, False,
     "labels.txt lists the classes in another order (no class at its own position)"),
    ("preset/{wrong0}-not-{preset}", _F({"normalization-mismatch"}), _wrong_preset(0), _F(), False, False,
     "inference preset differs from the training one"),
    ("preset/{wrong1}-not-{preset}", _F({"normalization-mismatch"}), _wrong_preset(1), _F(), False, False,
     "inference preset differs from the training one"),
    ("double-normalization", _F({"double-normalization", "normalization-mismatch"}), _double_normalization,
     _F(), False, False, "Rescaling (and Normalization) inside the model, the training preset applied again"),
    ("bn-statistics/perturbed", _F({"bn-statistics-mismatch"}), _bn_perturbed, _COLLAPSE, False, False,
     "moving statistics of every BN but the first: mean + 3 std, variance x 16"),
    ("bn-statistics/reset", _F({"bn-statistics-mismatch"}), _bn_reset, _COLLAPSE, False, False,
     "every BN's moving statistics reset to mean 0, variance 1"),
    ("random-base/phase1", _F({"pretraining-no-better-than-random", "bn-statistics-mismatch"}), _random_phase1,
     _F({"no-better-than-chance", "prediction-collapse"}), False, False,
     "a never-trained base (BN statistics initial), frozen, new head trained (guide phase 1)"),
    ("random-base/two-phase-recipe", _F({"pretraining-no-better-than-random"}), _random_recipe,
     _F({"no-better-than-chance", "bn-statistics-mismatch", "prediction-collapse"}), False, False,
     "a never-trained base through the whole guide recipe (phase 2 updates its BN statistics)"),
    ("untrained-head", _F({"no-better-than-chance", "prediction-collapse"}), _untrained_head, _F(), False, False,
     "the trained base under a head that was never trained (zero kernel: one answer for every image)"),
    ("output-loss/softmax-from-logits", _F({"output-loss-mismatch"}), _output_loss, _F(), False, False,
     "the softmax model compiled with SparseCategoricalCrossentropy(from_logits=True), saved and loaded"),
    ("clean/jpeg-files", _F(), _images_of("source_jpeg"), _F(), True, False,
     "the trained model on the same held-out images as JPEG files (quality 95), no EXIF orientation"),
    ("exif-orientation", _F({"exif-orientation"}), _images_of("source_exif"), _F(), False, False,
     "every third JPEG stored on its side with EXIF orientation 6 (upright when the tag is applied)"),
    ("duplicate-images/across-classes", _F({"duplicate-images"}), _images_of("source_duplicates"),
     _F({"likely-mislabelled"}), False, False,
     "two images of each class copied into the next class's folder (a copy under a wrong label)"),
    ("likely-mislabelled", _F({"likely-mislabelled"}), _images_of("source_mislabelled"), _F(), False, False,
     f"{MISLABELLED_PER_CLASS} images of each class filed under another class (about 8 %)"),
    ("images-resized", _F(), _resized, _F(), False, True,
     "the images stored at 24x24, resized to the model's 32x32 (info only)"),
    ("clean/end-to-end-nested-bn", _F(), _clean_end_to_end, _F(), True, False,
     "the trained features as a nested base, trainable and called as base(inputs) (its BatchNormalization "
     "trains), a new head, the whole model trained end to end on the target (Adam 3e-4, 8 epochs)"),
    ("fingerprint-fooled/{preset}-yours", _F(), _fooled(None), _F(), False, False,
     f"the first BN stores the statistics of its input under `{FOOLED_TOWARD}` (gamma and beta compensate: the "
     "same function); you use the training preset: nothing to report"),
    (f"fingerprint-fooled/{FOOLED_TOWARD}-yours", _F({"inference-preset-fails"}), _fooled(FOOLED_TOWARD), _F(),
     False, False, f"the same model, your code feeds `{FOOLED_TOWARD}`: the fingerprint prefers it, accuracy "
     "prefers the training preset (normalization-mismatch cannot name one), and your pipeline fails"),
)

_NM = "normalization-mismatch"
#: Faults under the wrong inference preset (the family's first wrong preset): ``(case name, planted added,
#: allowed added)``. The wrong preset is a fault of its own (normalization-mismatch), except where no preset
#: works (then it cannot be told) or the statistics are broken (the evidence conflicts: not scored).
WRONG_PRESET_CASES = (
    ("clean/end-to-end-nested-bn", _F({_NM}), _F()),
    ("head-frozen", _F({_NM}), _F()),
    ("trainable-inside-frozen-base", _F({_NM}), _F()),
    ("class-imbalance", _F({_NM}), _F()),
    ("label-order/labels.txt", _F({_NM}), _F()),
    ("exif-orientation", _F({_NM}), _F()),
    ("duplicate-images/across-classes", _F({_NM}), _F()),
    ("likely-mislabelled", _F({_NM}), _F()),
    ("untrained-head", _F(), _F()),
    ("bn-statistics/perturbed", _F(), _F({_NM})),
)


def _under_wrong_preset(setup):
    def wrapped(env):
        loaded, images, _, source = setup(env)
        return loaded, images, env.family.wrong_presets[0], source
    wrapped.__name__ = f"{setup.__name__}_wrong_preset"
    wrapped.base = setup
    return wrapped


#: The setups whose images are the target task's (digits 5-9, a transfer model).
_TARGET_TASK = (_clean_phase1, _clean_recipe, _all_frozen, _trainable_inside_frozen, _bn_trainable_unpinned,
                _class_count, _random_phase1, _random_recipe, _untrained_head, _clean_end_to_end,
                _bn_trainable_stats_off)


#: An unfreeze depth beyond any family's base: the whole base trains.
WHOLE_BASE = 10_000

#: Fine-tuning cases, judged by ``catastrophic-forgetting``: (name, planted, settings, control, why). Each
#: fine-tunes the family's phase 1 model (the keras-io guide's transfer model) on the target images with
#: `tlviz.finetune.run.run_finetune`, runs the named control the same way, stores both as the app and the
#: command line store runs, and diagnoses with those runs (`tlviz.diagnose.forgetting.with_runs`), as the
#: Diagnose page does. The planted cause is the classic one: the whole base at a learning rate far too high
#: for it. The clean controls fine-tune the base at the guide's low rates.
RUN_CASE_TABLE = (
    ("forgetting/whole-base-adam-0.1", True, dict(unfreeze=WHOLE_BASE, lr=0.1, epochs=2), "head-only",
     "the whole base unfrozen at Adam 0.1, 2 epochs; its head-only control"),
    ("forgetting/whole-base-sgd-1.0", True, dict(unfreeze=WHOLE_BASE, lr=1.0, epochs=2, optimizer="sgd"),
     "random-init", "the whole base unfrozen at SGD (momentum 0.9) 1.0, 2 epochs; its random-init control"),
    ("clean/finetune-whole-base-1e-5", False, dict(unfreeze=WHOLE_BASE, lr=1e-5, epochs=2), "head-only",
     "the guide's phase 2 as a run: the whole base at Adam 1e-5, 2 epochs; its head-only control"),
    ("clean/finetune-top-layers-1e-4", False, dict(unfreeze=4, lr=1e-4, epochs=3), "random-init",
     "the top 4 weight layers of the base at Adam 1e-4, 3 epochs; its random-init control"),
)


def cases(families=None, names=None) -> list[Case]:
    """The matrix: every case of `CASE_TABLE`, its `WRONG_PRESET_CASES` (named ``case@preset``), then
    `RUN_CASE_TABLE`, for every family (optionally filtered).

    Args:
        families: family names. Defaults to all.
        names: keep cases whose name contains one of these strings. Defaults to all.
    """
    out = []
    for fam in families or FAMILIES:
        f = FAMILIES[fam]
        table = {}
        for name, planted, setup, allowed, clean, resized, why in CASE_TABLE:
            name = name.format(wrong0=f.wrong_presets[0], wrong1=f.wrong_presets[1], preset=f.preset)
            table[name] = Case(fam, name, planted, setup, allowed, clean, resized, why,
                               task="target" if setup in _TARGET_TASK else "source",
                               random_base=setup in (_random_phase1, _random_recipe))
        for name, more, also in WRONG_PRESET_CASES:
            c = table[name]
            wrong = f.wrong_presets[0]
            table[f"{name}@{wrong}"] = replace(
                c, name=f"{name}@{wrong}", planted=c.planted | more, allowed=c.allowed | also, clean=False,
                setup=_under_wrong_preset(c.setup), why=f"{c.why}; your inference code uses `{wrong}`")
        out += [c for name, c in table.items() if not names or any(n in name for n in names)]
        for name, planted, settings, control, why in RUN_CASE_TABLE:
            if names and not any(n in name for n in names):
                continue
            out.append(Case(fam, name, _F({FORGETTING} if planted else ()), _clean_phase1, clean=not planted,
                            why=why, task="target", run=(settings, control)))
    return out


# -- running and scoring -----------------------------------------------------------------------------

def _training_mode_truth(model) -> bool:
    """Whether ``training=True`` changes how the model computes: a Dropout / noise layer with a non-zero
    rate, or a BatchNormalization layer that is trainable and not inside a nested model called with a
    fixed ``training=False`` (read from the graph's recorded call arguments)."""
    import keras

    from tlviz.layers import random_in_training

    def pinned(layer) -> bool:
        nodes = getattr(layer, "_inbound_nodes", None) or []
        return bool(nodes) and all((getattr(getattr(n, "arguments", None), "kwargs", None) or {})
                                   .get("training", None) is False for n in nodes)

    def walk(m, under_pinned: bool):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                yield from walk(layer, under_pinned or pinned(layer))
            else:
                yield layer, under_pinned

    for layer, under in walk(model, False):
        if random_in_training(layer):
            return True
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable and not under:
            return True
    return False


@dataclass
class Result:
    case: Case
    fired: dict            # id -> (severity, title)
    skipped: dict          # id -> reason
    seconds: float
    info_truth: dict = field(default_factory=dict)
    error: str | None = None
    #: the reference finds this case's trained base no better than random features on its task
    weak_base: bool = False
    #: a fine-tuning case: what its runs measured (CKA, accuracies)
    detail: str = ""
    #: the task whose images were diagnosed (``source`` / ``target``); None: the case's own
    task: str | None = None

    @property
    def scored_fired(self) -> set:
        """Checks with an error or warning finding (a check the registry lists as info may raise its finding
        to a warning on a measured effect: that counts too)."""
        return {i for i, (sev, _) in self.fired.items() if sev in ("error", "warning")}

    @property
    def missed(self) -> set:
        """Planted checks not reported: an error / warning check without an error or warning finding, an
        info check (advice read from the file) without any finding."""
        info = {c.id for c in _checks()[1]}
        return {c for c in self.case.planted if c not in (set(self.fired) if c in info else self.scored_fired)}

    @property
    def false_alarms(self) -> set:
        return self.scored_fired - set(self.case.planted) - set(self.case.allowed)


def run_case(case: Case, env: Env, keep_report: bool = False) -> Result:
    """Plant the fault, run every check, and record what fired and what was skipped.

    Args:
        case / env: the case and its family's `Env`.
        keep_report: keep the `DiagnosisReport` on the result (``result.report``), e.g. to judge it again
            for another preset with `rejudged`. Defaults to `False`.
    """
    from tlviz.diagnose import diagnose

    t0 = time.perf_counter()
    loaded, images, preset, source = case.setup(env)
    if case.run is not None:
        info_truth = {}
    else:
        info_truth = {"input-resized": case.resized, "training-mode-inference": _training_mode_truth(loaded.model)}
    try:
        detail = ""
        if case.run is not None:
            report, detail = _diagnose_with_runs(case, env, loaded, images, preset, source)
        else:
            report = diagnose(loaded, images, preset, source=source)
    except Exception as exc:  # a refusal or a crash: every planted check is missed
        return Result(case, {}, {}, time.perf_counter() - t0, info_truth, f"{type(exc).__name__}: {exc}")
    names = list(images.class_names)
    task = ("target" if names == list(env.data["target_names"]) else
            "source" if names == list(env.data["source_names"]) else None)
    return _result(case, report, time.perf_counter() - t0, info_truth, detail, task, keep_report)


def _result(case: Case, report, seconds: float, info_truth: dict, detail: str, task, keep_report: bool) -> Result:
    fired = {f.id: (f.severity, f.title) for f in report.findings}
    skipped = {s.id: s.reason for s in report.skipped}
    r = Result(case, fired, skipped, seconds, info_truth, detail=detail, task=task)
    if keep_report:
        r.report = report
    return r


def rejudged(result: Result, case: Case, preset: str) -> Result | None:
    """`case` (the same plant as `result`'s, under `preset`) judged from `result`'s report, without running
    the model again (`DiagnosisReport.for_preset`, as the Diagnose page does when the preset changes).

    Only the preset-dependent checks depend on the inference preset while the model's expected preset is
    known (the other checks judge the model under that one); without it (no preset above chance) they run
    under the user's preset, so None is returned and the case must run.
    """
    report = getattr(result, "report", None)
    if report is None or result.error or report.expected_preset is None or case.run is not None:
        return None
    t0 = time.perf_counter()
    return _result(case, report.for_preset(preset), time.perf_counter() - t0, dict(result.info_truth), "",
                   result.task, False)


def _diagnose_with_runs(case: Case, env: Env, loaded, images, preset: str, source):
    """A fine-tuning case: the run and its control, stored in a runs folder, then the diagnosis judged on them."""
    import shutil

    from tlviz.diagnose import diagnose
    from tlviz.diagnose.forgetting import runs_for, with_runs
    from tlviz.contentkeys import pixels_key
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.config import RunConfig, control_config
    from tlviz.finetune.run import run_finetune
    from tlviz.finetune.store import RunWriter

    settings, control = case.run
    root = env.dir / "runs" / case.name.replace("/", "_")
    shutil.rmtree(root, ignore_errors=True)  # every case starts from no runs
    key, cache = pixels_key(images.images), ActivationCache()
    config = RunConfig(preset=preset, label=case.name, **settings)
    for run_id, cfg in (("run", config), ("control", control_config(config, control, "run"))):
        writer = RunWriter(root / run_id)
        writer.write_config(cfg, {"sha256": loaded.sha256, "filename": loaded.filename},
                            {"image_key": key, "source": images.source})
        result = run_finetune(loaded, images, cfg, writer=writer, cache=cache, image_key=key, save=False)
        writer.status(result.state)
    records = runs_for(loaded.sha256, key, None, root)
    report = with_runs(diagnose(loaded, images, preset, source=source, checks=list(RUN_CHECKS)), records)
    return report, _runs_detail(records)


def _runs_detail(records) -> str:
    """One line on what the runs measured: the lowest CKA of an unfrozen block, and each accuracy."""
    from tlviz.errors import CheckSkipped
    from tlviz.diagnose.forgetting import judge_runs

    try:
        judged = judge_runs(records)[1]
    except CheckSkipped as exc:
        return f"skipped: {exc}"[:160]
    accs = ", ".join(f"{r.control or 'run'} {r.outcome.val_accuracy:.1%}" for r in records
                     if r.outcome.val_accuracy is not None)
    ckas = ", ".join(f"lowest CKA {j.lowest_cka:.2f}" for j in judged if j.lowest_cka is not None)
    return "; ".join(x for x in (ckas, f"val accuracy {accs}") if x)


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, truth: bool, fired: bool) -> None:
        if truth and fired:
            self.tp += 1
        elif truth:
            self.fn += 1
        elif fired:
            self.fp += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


def _checks():
    """``(scored, info)``: the checks whose findings can be errors or warnings (their registry severity, or the
    `measured_severity` a measurement on the images raises an advice to), and the others."""
    from tlviz.diagnose import CHECKS

    def scored_check(c):
        return c.severity in ("error", "warning") or getattr(c, "measured_severity", None) in ("error", "warning")

    return [c for c in CHECKS if scored_check(c)], [c for c in CHECKS if not scored_check(c)]


INFO_SCORED = ("input-resized", "training-mode-inference")


PROBE_CHECK = "pretraining-no-better-than-random"


def score(results: list[Result], weak_bases_unscored: bool = False) -> dict:
    """Per-check and overall tallies (error + warning checks), and info tallies.

    Args:
        results: the cases run.
        weak_bases_unscored: leave `PROBE_CHECK` unscored on cases whose trained base the reference
            (`Env.reference`) finds no better than random features. Defaults to `False` (the truth by
            construction: a trained base is a negative case).
    """
    scored, info = _checks()
    # An info check that raised a finding to a warning somewhere (a measured effect) is scored like a warning.
    raised = set().union(*(r.scored_fired for r in results)) if results else set()
    scored = scored + [c for c in info if c.id in raised]
    info = [c for c in info if c.id not in raised]
    per = {c.id: Tally() for c in scored}
    overall = Tally()
    for r in results:
        fired = r.scored_fired
        for c in scored:
            if not r.case.scores(c.id) or c.id in r.case.allowed or (
                    weak_bases_unscored and r.weak_base and c.id == PROBE_CHECK):
                continue
            truth, got = c.id in r.case.planted, c.id in fired
            per[c.id].add(truth, got)
            overall.add(truth, got)
    info_tally = {i: Tally() for i in INFO_SCORED}
    info_counts = {c.id: 0 for c in info if c.id not in INFO_SCORED}
    for r in results:
        if r.case.run is not None:  # a fine-tuning case runs the run-judging checks only
            continue
        for i in INFO_SCORED:
            info_tally[i].add(bool(r.info_truth.get(i)), i in r.fired)
        for i in info_counts:
            info_counts[i] += i in r.fired
    return {"per_check": per, "overall": overall, "info": info_tally, "info_counts": info_counts,
            "severity": {c.id: c.severity for c in scored}}


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:5.2f}"


def _interval(k: int, n: int) -> str:
    from tlviz.stats import wilson_interval

    if not n:
        return ""
    lo, hi = wilson_interval(k, n)
    return f"[{lo:.2f}, {hi:.2f}]"


def report(results: list[Result], envs: dict, seconds: float) -> dict:
    """Print the tables and the targets; return the targets as booleans."""
    s = score(results)
    per, overall = s["per_check"], s["overall"]
    n_clean = sum(r.case.clean for r in results)
    print()
    print(f"Planted-fault matrix: {len(results)} cases ({n_clean} clean controls) over "
          f"{len({r.case.family for r in results})} model families, {len(per)} error/warning checks scored; "
          f"{seconds / 60:.1f} min")
    print("Data: scikit-learn digits, 32x32 RGB: `digits` (source task 0-9, target task 5-9) and `sample` (the "
          "committed sample's: source 0-4, its own held-out 20 %, target 5-9); scikit-image is not installed, so "
          "no textures.")
    for name, env in envs.items():
        facts = ", ".join(f"{k} {v['held_out_accuracy']:.1%}" for k, v in env.facts.items() if k in MODEL_KINDS)
        print(f"  {name} (data `{env.family.data}`, trained with `{env.family.preset}`): held-out accuracy {facts}")
        ref = env.reference()
        print("    reference probe (logistic regression on the whole train split), trained base vs random weights: "
              + "; ".join(f"{task} {v['trained']:.1%} vs {v['random']:.1%}" for task, v in ref.items()))
    print()
    head = f"{'check':36s} {'severity':8s} {'TP':>4s} {'FP':>4s} {'FN':>4s} {'TN':>4s} {'precision':>9s} {'recall':>7s}"
    print(head)
    print("-" * len(head))
    check_ok = True
    for cid, t in per.items():
        ok = all(v is None or v >= TARGET_PER_CHECK for v in (t.precision, t.recall)) and t.tp + t.fn > 0
        check_ok &= ok
        print(f"{cid:36s} {s['severity'][cid]:8s} {t.tp:4d} {t.fp:4d} {t.fn:4d} {t.tn:4d} {_fmt(t.precision):>9s} "
              f"{_fmt(t.recall):>7s}{'' if ok else '   < 0.9'}")
    print("-" * len(head))
    print(f"{'overall (error + warning)':45s} {overall.tp:4d} {overall.fp:4d} {overall.fn:4d} {overall.tn:4d} "
          f"{_fmt(overall.precision):>9s} {_fmt(overall.recall):>7s}")
    print(f"  precision 95 % interval {_interval(overall.tp, overall.tp + overall.fp)}, "
          f"recall 95 % interval {_interval(overall.tp, overall.tp + overall.fn)}")
    n_runs = sum(r.case.run is not None for r in results)
    if n_runs:
        print(f"  {', '.join(RUN_CHECKS)}: scored on the {n_runs} fine-tuning cases only (it judges runs, not a file); "
              "every other check on the model-file cases only")
    print()
    n_files = sum(r.case.run is None for r in results)
    print("Info findings (not in the overall figures):")
    for cid, t in s["info"].items():
        print(f"  {cid:34s} TP {t.tp:3d}  FP {t.fp:3d}  FN {t.fn:3d}  TN {t.tn:3d}  precision {_fmt(t.precision)}"
              f"  recall {_fmt(t.recall)}")
    for cid, n in s["info_counts"].items():
        print(f"  {cid:34s} fired on {n} of {n_files} model-file cases (a measurement, not a plant: not scored)")
    print()
    clean_bad = [(r, sorted(r.scored_fired)) for r in results if r.case.clean and r.scored_fired]
    print(f"Clean controls with an error or warning: {len(clean_bad)} of {n_clean}")
    for r, got in clean_bad:
        for cid in got:
            print(f"  {r.case.label}: {cid} — {r.fired[cid][1]}")
    misses = [(r, c) for r in results for c in sorted(r.missed)]
    alarms = [(r, c) for r in results if not r.case.clean for c in sorted(r.false_alarms)]
    print(f"Misses (planted, not reported): {len(misses)}")
    for r, c in misses:
        why = r.error or r.skipped.get(c, "ran, no finding")
        print(f"  {r.case.label}: {c} — {why[:160]}")
    print(f"False alarms on fault cases (neither planted nor an allowed consequence): {len(alarms)}")
    for r, c in alarms:
        print(f"  {r.case.label}: {c} — {r.fired[c][1][:160]}")
    allowed_fired = [(r, c) for r in results for c in sorted(r.scored_fired & set(r.case.allowed))]
    if allowed_fired:
        print(f"Allowed consequences that fired (not scored): "
              + ", ".join(f"{r.case.label}: {c}" for r, c in allowed_fired))
    if any(r.weak_base for r in results):
        w = score(results, weak_bases_unscored=True)
        t, o = w["per_check"][PROBE_CHECK], w["overall"]
        n_weak = sum(r.weak_base for r in results)
        print(f"Where the reference finds the trained base no better than random features ({n_weak} cases), "
              f"the claim of {PROBE_CHECK} is arguably true. Leaving it unscored there: {PROBE_CHECK} precision "
              f"{_fmt(t.precision).strip()}, recall {_fmt(t.recall).strip()}; overall precision "
              f"{_fmt(o.precision).strip()}, recall {_fmt(o.recall).strip()} (the targets below use the main figures).")
    print()
    targets = {
        f"overall recall >= {TARGET_OVERALL}": overall.recall is not None and overall.recall >= TARGET_OVERALL,
        f"overall precision >= {TARGET_OVERALL}": overall.precision is not None
        and overall.precision >= TARGET_OVERALL,
        f"no check below {TARGET_PER_CHECK} on precision or recall": check_ok,
        "clean controls: zero errors or warnings": not clean_bad,
    }
    print("Targets (issue 13):")
    for what, ok in targets.items():
        print(f"  {'MET    ' if ok else 'NOT MET'}  {what}")
    return targets


def _to_json(results: list[Result], targets: dict) -> dict:
    return {"targets": targets, "cases": [
        {"case": r.case.label, "planted": sorted(r.case.planted), "allowed": sorted(r.case.allowed),
         "clean": r.case.clean, "fired": {k: list(v) for k, v in r.fired.items()}, "skipped": r.skipped,
         "missed": sorted(r.missed), "false_alarms": sorted(r.false_alarms), "info_truth": r.info_truth,
         "seconds": round(r.seconds, 2), "error": r.error, "weak_base": r.weak_base, "detail": r.detail}
        for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Precision and recall of tlviz's diagnose over planted faults.")
    parser.add_argument("--quick", action="store_true", help=f"only the {', '.join(QUICK_FAMILIES)} family")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="run this family (repeatable)")
    parser.add_argument("--case", action="append", help="run cases whose name contains this text (repeatable)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"trained models (default {DEFAULT_CACHE})")
    parser.add_argument("--json", type=Path, help="write every case's findings here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    families = args.family or (list(QUICK_FAMILIES) if args.quick else list(FAMILIES))
    t0 = time.perf_counter()
    envs, results = {}, []
    for fam in families:
        env = envs[fam] = Env(FAMILIES[fam], args.cache)
        print(f"{fam}:")
        for case in cases([fam], args.case):
            r = run_case(case, env)
            r.weak_base = not case.random_base and env.base_no_better_than_random(r.task or case.task)
            results.append(r)
            marks = ([f"MISSED {sorted(r.missed)}"] if r.missed else []) + (
                [f"FALSE ALARM {sorted(r.false_alarms)}"] if r.false_alarms else [])
            print(f"  {case.name:32s} {r.seconds:5.1f} s  fired {sorted(r.scored_fired) or '-'}  "
                  f"{'; '.join(marks) or 'ok'}" + (f"\n      {r.detail}" if r.detail else ""))
    targets = report(results, envs, time.perf_counter() - t0)
    if args.json:
        args.json.write_text(json.dumps(_to_json(results, targets), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
