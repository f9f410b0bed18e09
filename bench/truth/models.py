"""Training: the trained, transferred, random-base and end-to-end models of a family (`Env`, cached on disk)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.truth.data import DATASETS, MISLABELLED_PER_CLASS, write_folder, write_jpegs
from bench.truth.families import Family
from bench.truth.settings import DEFAULT_CACHE, SEED, SIZE, SOURCE_CLASSES, TARGET_CLASSES, VERSION


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


def transfer(base, family: Family, pinned: bool = True, name: str = "", n_out: int = TARGET_CLASSES):
    """The keras-io guide's model: ``base(inputs, training=False)`` (`pinned`), a new head."""
    import keras

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = base(inp, training=False) if pinned else base(inp)
    if family.dropout:
        x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    out = keras.layers.Dense(n_out, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name=name or f"{family.name}transfer")


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
            return write_folder(self.images_dir / which, x, y, d[f"{which}_names"])
        if which == "source_labels_shuffled":
            x, y = d["source_test"]
            names = d["source_names"]
            order = names[1:] + names[:1]  # no class stays at its position
            return write_folder(self.images_dir / which, x, y, names, labels_txt=order)
        if which == "source_24px":
            x, y = d["source_test"]
            return write_folder(self.images_dir / which, x, y, d["source_names"], size=24)
        if which in ("source_jpeg", "source_exif"):
            x, y = d["source_test"]
            return write_jpegs(self.images_dir / which, x, y, d["source_names"], turned=which == "source_exif")
        if which == "source_duplicates":
            x, y = d["source_test"]
            src = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(len(d["source_names"]))])
            # two images of each class copied, byte for byte, into the next class's folder
            x2 = np.concatenate([x, x[src]])
            y2 = np.concatenate([y, (y[src] + 1) % len(d["source_names"])])
            return write_folder(self.images_dir / which, x2, y2, d["source_names"])
        if which == "source_mislabelled":
            x, y = d["source_test"]
            y2 = y.copy()
            rng = np.random.default_rng(SEED + 2)
            for c in range(len(d["source_names"])):  # 6 images of each class filed under another class
                moved = rng.choice(np.flatnonzero(y == c), MISLABELLED_PER_CLASS, replace=False)
                y2[moved] = (c + 1 + rng.integers(0, len(d["source_names"]) - 1, len(moved))) % len(d["source_names"])
            return write_folder(self.images_dir / which, x, y2, d["source_names"])
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
            model = transfer(base, f, pinned=False, name=f"{f.name}_end_to_end", n_out=n_target)
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
                model = transfer(base, f, name=f"{f.name}_{'random_base' if random else 'transfer'}",
                                  n_out=n_target)
                _fit(model, d["target_train"], f.preset, 3e-3, 20)
            self._save(model, kind, _accuracy(model, d["target_test"], f.preset), f"target, {f.preset}")
        self.log(f"  trained {f.name}/{kind} in {time.perf_counter() - t0:.0f} s "
                 f"(held-out accuracy {self.facts[kind]['held_out_accuracy']:.1%})")


def _prep(x, preset):
    from tlviz.presets import apply_preset

    return apply_preset(x, preset)
