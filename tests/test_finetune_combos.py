"""Run options combined: every preset x augmentation x activation cache x new head x BN mode x two phases.

A pairwise covering set (every pair of values of any two options appears in at least one run) of short
runs on the committed digits model: each run completes, or is refused before it starts with a message that
says why and what to do. The covering set is built here, deterministically, and checked to cover.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import pytest

from tlviz.finetune.config import RunConfig, RunRefused
from tlviz.presets import PRESETS, CustomPreset

warnings.filterwarnings("ignore", module="keras")

FACTORS = {
    "preset": list(PRESETS),
    "augment": [False, True],
    "use_cache": [True, False],
    "new_head": [None, True, False],
    "bn": ["frozen", "train"],
    "two_phase": [False, True],
    "unfreeze": [0, 3],
}


def pairwise_cases(factors: dict[str, list]) -> list[dict]:
    """A small set of option combinations in which every pair of values of two options occurs.

    Greedy: start each case from the first uncovered pair, then give every other option the value
    that covers the most uncovered pairs with the values chosen so far (ties: the first value).
    """
    names = list(factors)
    todo = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
            for va in factors[a] for vb in factors[b]}

    def key(v):
        return repr(v)

    cases = []
    while todo:
        a, va, b, vb = min(todo, key=lambda t: (names.index(t[0]), names.index(t[2]), key(t[1]), key(t[3])))
        case = {a: va, b: vb}
        for name in names:
            if name in case:
                continue
            scores = [sum((n, case[n], name, v) in todo if names.index(n) < names.index(name)
                          else (name, v, n, case[n]) in todo for n in case) for v in factors[name]]
            case[name] = factors[name][int(np.argmax(scores))]
        todo -= {(x, case[x], y, case[y]) for x, y in itertools.combinations(names, 2)}
        cases.append(case)
    return cases


CASES = pairwise_cases(FACTORS)


def test_the_cases_cover_every_pair_and_stay_few():
    for a, b in itertools.combinations(FACTORS, 2):
        seen = {(c[a], c[b]) for c in CASES}
        assert seen == set(itertools.product(FACTORS[a], FACTORS[b])), (a, b)
    full = int(np.prod([len(v) for v in FACTORS.values()]))
    assert len(CASES) <= 24 < full


def _first_per_class(images, n: int = 15):
    keep = np.concatenate([np.flatnonzero(images.labels == k)[:n] for k in range(len(images.class_names))])
    return dataclasses.replace(images, images=images.images[keep], labels=images.labels[keep],
                               files=[images.files[i] for i in keep],
                               original_sizes=[images.original_sizes[i] for i in keep] if images.original_sizes else [],
                               orientations=[images.orientations[i] for i in keep] if images.orientations else [])


@pytest.fixture(scope="module")
def small_sets(loaded_base, base_images, digits_0_4):
    """15 images per class of the model's own task (digits 0-4), so each run takes a few seconds: as loaded
    (bilinear resize) and centre-cropped, as the `teachable` preset requires."""
    from tlviz.imagesets import load_image_set

    cropped = load_image_set(digits_0_4, loaded_base.image_size, loaded_base.channels, resize="crop")
    return {"bilinear": _first_per_class(base_images), "crop": _first_per_class(cropped)}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_each_combination_completes(loaded_base, small_sets, case):
    from tlviz.finetune.run import run_finetune
    from tlviz.presets import preset_resize

    config = RunConfig(epochs=1, head_epochs=1, batch_size=16, lr=1e-3, seed=1, **case)
    result = run_finetune(loaded_base, small_sets[preset_resize(case["preset"])], config, save=False)
    assert result.state == "completed", (case, result.state, getattr(result, "message", ""))
    assert len(result.history) == (2 if case["two_phase"] else 1)
    assert np.isfinite(result.final["val_loss"])
    wc = result.weight_change
    assert (wc.loc[~wc["trainable"], "l2_change"] == 0).all()  # what did not train is exactly unchanged
    assert (wc.loc[wc["trainable"], "l2_change"] > 0).any()  # and something trained
    assert np.isfinite(wc["l2_change"]).all()


def test_a_custom_preset_is_refused_before_the_run_with_what_to_do():
    with pytest.raises(RunRefused) as exc:
        RunConfig(preset=CustomPreset(scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    msg = str(exc.value)
    assert "named preset" in msg and "custom(scale=" in msg and "Rescaling" in msg and "`raw`" in msg


def test_teachable_on_images_resized_otherwise_is_refused_before_the_run(loaded_base, small_sets):
    from tlviz.finetune.run import run_finetune

    with pytest.raises(RunRefused, match="resize='crop'"):
        run_finetune(loaded_base, small_sets["bilinear"], RunConfig(epochs=1, preset="teachable"), save=False)
