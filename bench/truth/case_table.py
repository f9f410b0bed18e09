"""The cases: `Case`, the tables of planted and clean cases per family, and `cases()`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from bench.truth.data import MISLABELLED_PER_CLASS
from bench.truth.families import FAMILIES
from bench.truth.faults import (FOOLED_TOWARD, all_frozen, bn_perturbed, bn_reset, bn_trainable_partly_frozen,
                               bn_trainable_stats_off, bn_trainable_unpinned, class_count, clean_end_to_end,
                               clean_phase1, clean_recipe, clean_trained, double_normalization, fooled, head_frozen,
                               images_of, imbalance, label_order, nonfinite, output_loss, random_phase1,
                               random_recipe, resized_images, too_few, trainable_inside_frozen, untrained_head,
                               wrong_preset)
from bench.truth.settings import FORGETTING, RUN_CHECKS


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


_F = frozenset
#: A model whose accuracy collapses may fall to chance, under the user's preset too; a base whose statistics
#: are broken may probe no better than a random one. Consequences, not plants: not scored on the cases that
#: cause them.
_COLLAPSE = _F({"no-better-than-chance", "pretraining-no-better-than-random", "prediction-collapse",
                "inference-preset-fails"})

#: (name, planted, setup, allowed, clean, resized, why): the same cases for every family.
CASE_TABLE = (
    ("clean/trained", _F(), clean_trained, _F(), True, False,
     "the trained model, its own preset, labels in output order"),
    ("clean/phase1-frozen-base", _F(), clean_phase1, _F(), True, False,
     "keras-io guide phase 1: base(x, training=False), base frozen, new head trained"),
    ("clean/two-phase-recipe", _F(), clean_recipe, _F(), True, False,
     "keras-io guide: then base.trainable = True, recompiled at 1e-5, trained 2 epochs"),
    ("weights-not-finite", _F({"weights-not-finite"}), nonfinite, _F(), False, False,
     "NaN, +inf and -inf in a convolution kernel"),
    ("every-layer-frozen", _F({"no-trainable-weights"}), all_frozen, _F(), False, False,
     "phase 1 model with model.trainable = False"),
    ("head-frozen", _F({"head-frozen"}), head_frozen, _F(), False, False,
     "the trained model's Dense head set trainable=False, the rest trainable"),
    ("trainable-inside-frozen-base", _F({"trainable-inside-frozen-model"}), trainable_inside_frozen, _F(),
     False, False, "phase 1 (base frozen), then two convolutions inside the base set trainable"),
    # bn-trainable-in-base is advice (info) read from the file, and a warning only when batch statistics, as
    # fit runs them, measurably cost accuracy: the two structural plants expect the advice, no warning; the
    # third plants the effect.
    ("bn-trainable/unpinned-base", _F(), bn_trainable_unpinned, _F(), False, False,
     "base(inputs) without training=False, base.trainable = True (advice only: no effect planted)"),
    ("bn-trainable/partly-frozen", _F(), bn_trainable_partly_frozen, _F(), False,
     False, "lower half of the convolutions frozen, every BatchNormalization trainable (advice only)"),
    ("bn-trainable/moving-mean-off", _F({"bn-trainable-in-base"}), bn_trainable_stats_off, _F(), False, False,
     "the end-to-end model (nested base, trainable BN, base(inputs)), its last BN's moving mean 3 std off with "
     "beta compensating: inference unchanged, training-mode batch statistics shift that layer by 3 gamma"),
    ("class-count-mismatch", _F({"class-count-mismatch"}), class_count, _F(), False, False,
     "4 class folders for a 5-output model"),
    ("class-imbalance", _F({"class-imbalance"}), imbalance, _F(), False, False,
     "one class cut to 21 images, the largest keeps about 72 (ratio > 3, every class >= 20)"),
    ("too-few-images", _F({"too-few-images"}), too_few, _F(), False, False,
     "15 images in every class (balanced)"),
    ("label-order/labels.txt", _F({"label-order-mismatch"}), label_order, _F(), False, False,
     "labels.txt lists the classes in another order (no class at its own position)"),
    ("preset/{wrong0}-not-{preset}", _F({"normalization-mismatch"}), wrong_preset(0), _F(), False, False,
     "inference preset differs from the training one"),
    ("preset/{wrong1}-not-{preset}", _F({"normalization-mismatch"}), wrong_preset(1), _F(), False, False,
     "inference preset differs from the training one"),
    ("double-normalization", _F({"double-normalization", "normalization-mismatch"}), double_normalization,
     _F(), False, False, "Rescaling (and Normalization) inside the model, the training preset applied again"),
    ("bn-statistics/perturbed", _F({"bn-statistics-mismatch"}), bn_perturbed, _COLLAPSE, False, False,
     "moving statistics of every BN but the first: mean + 3 std, variance x 16"),
    ("bn-statistics/reset", _F({"bn-statistics-mismatch"}), bn_reset, _COLLAPSE, False, False,
     "every BN's moving statistics reset to mean 0, variance 1"),
    ("random-base/phase1", _F({"pretraining-no-better-than-random", "bn-statistics-mismatch"}), random_phase1,
     _F({"no-better-than-chance", "prediction-collapse"}), False, False,
     "a never-trained base (BN statistics initial), frozen, new head trained (guide phase 1)"),
    ("random-base/two-phase-recipe", _F({"pretraining-no-better-than-random"}), random_recipe,
     _F({"no-better-than-chance", "bn-statistics-mismatch", "prediction-collapse"}), False, False,
     "a never-trained base through the whole guide recipe (phase 2 updates its BN statistics)"),
    ("untrained-head", _F({"no-better-than-chance", "prediction-collapse"}), untrained_head, _F(), False, False,
     "the trained base under a head that was never trained (zero kernel: one answer for every image)"),
    ("output-loss/softmax-from-logits", _F({"output-loss-mismatch"}), output_loss, _F(), False, False,
     "the softmax model compiled with SparseCategoricalCrossentropy(from_logits=True), saved and loaded"),
    ("clean/jpeg-files", _F(), images_of("source_jpeg"), _F(), True, False,
     "the trained model on the same held-out images as JPEG files (quality 95), no EXIF orientation"),
    ("exif-orientation", _F({"exif-orientation"}), images_of("source_exif"), _F(), False, False,
     "every third JPEG stored on its side with EXIF orientation 6 (upright when the tag is applied)"),
    ("duplicate-images/across-classes", _F({"duplicate-images"}), images_of("source_duplicates"),
     _F({"likely-mislabelled"}), False, False,
     "two images of each class copied into the next class's folder (a copy under a wrong label)"),
    ("likely-mislabelled", _F({"likely-mislabelled"}), images_of("source_mislabelled"), _F(), False, False,
     f"{MISLABELLED_PER_CLASS} images of each class filed under another class (about 8 %)"),
    ("images-resized", _F(), resized_images, _F(), False, True,
     "the images stored at 24x24, resized to the model's 32x32 (info only)"),
    ("clean/end-to-end-nested-bn", _F(), clean_end_to_end, _F(), True, False,
     "the trained features as a nested base, trainable and called as base(inputs) (its BatchNormalization "
     "trains), a new head, the whole model trained end to end on the target (Adam 3e-4, 8 epochs)"),
    ("fingerprint-fooled/{preset}-yours", _F(), fooled(None), _F(), False, False,
     f"the first BN stores the statistics of its input under `{FOOLED_TOWARD}` (gamma and beta compensate: the "
     "same function); you use the training preset: nothing to report"),
    (f"fingerprint-fooled/{FOOLED_TOWARD}-yours", _F({"inference-preset-fails"}), fooled(FOOLED_TOWARD), _F(),
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
    wrapped.__name__ = f"{setup.__name__}wrong_preset"
    wrapped.base = setup
    return wrapped


#: The setups whose images are the target task's (digits 5-9, a transfer model).
_TARGET_TASK = (clean_phase1, clean_recipe, all_frozen, trainable_inside_frozen, bn_trainable_unpinned,
                class_count, random_phase1, random_recipe, untrained_head, clean_end_to_end,
                bn_trainable_stats_off)


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
                               random_base=setup in (random_phase1, random_recipe))
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
            out.append(Case(fam, name, _F({FORGETTING} if planted else ()), clean_phase1, clean=not planted,
                            why=why, task="target", run=(settings, control)))
    return out
