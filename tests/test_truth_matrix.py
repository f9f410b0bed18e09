"""The planted-fault matrix (``bench/truth_matrix.py``), a small subset that always runs.

The small CNN family is trained here (seeded, digits from scikit-learn, about 20 seconds on two
cores) into a temporary folder; each case plants one fault (or is a clean control) and the full
diagnosis must report exactly the planted checks among its errors and warnings (allowed consequences
aside). Only cases the engine gets right today are asserted; the bench prints the whole matrix.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("truth_matrix", ROOT / "bench" / "truth_matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["truth_matrix"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tm = _load_bench()

#: Cases of the cnn family asserted here (names from `truth_matrix.CASE_TABLE`), the clean controls among them.
SUBSET = (
    "clean/trained",
    "clean/phase1-frozen-base",
    "clean/two-phase-recipe",
    "every-layer-frozen",
    "head-frozen",
    "trainable-inside-frozen-base",
    "bn-trainable/unpinned-base",
    "label-order/labels.txt",
    "preset/raw-not-unit",
    "weights-not-finite",
    "random-base/phase1",
    "random-base/two-phase-recipe",
    "bn-statistics/reset",
    "untrained-head",
    "output-loss/softmax-from-logits",
    "clean/jpeg-files",
    "exif-orientation",
    "duplicate-images/across-classes",
    "likely-mislabelled",
    "forgetting/whole-base-adam-0.1",
    "clean/finetune-whole-base-1e-5",
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tm.Env(tm.FAMILIES["cnn"], tmp_path_factory.mktemp("truth_matrix"), log=lambda text: None)


def _case(name: str):
    found = [c for c in tm.cases(["cnn"]) if c.name == name]
    assert len(found) == 1, name
    return found[0]


@pytest.mark.parametrize("name", SUBSET)
def test_planted_fault_found_and_nothing_else(env, name):
    case = _case(name)
    result = tm.run_case(case, env)
    assert result.error is None, result.error
    assert not result.missed, (f"{case.label}: missed {sorted(result.missed)}; skipped: "
                               f"{ {c: result.skipped.get(c) for c in result.missed} }")
    assert not result.false_alarms, (f"{case.label}: false alarms "
                                     f"{ {c: result.fired[c] for c in result.false_alarms} }")
    if case.clean:
        assert not result.scored_fired


def test_the_trained_models_are_good(env):
    """The clean controls mean something only if the models work: the trained model near perfect on its
    own digits, the transfer model (phase 1) far above chance (20 %) on the new ones."""
    for kind, least in (("trained", 0.95), ("phase1", 0.6)):
        env.path(kind)
        assert env.facts[kind]["held_out_accuracy"] > least, (kind, env.facts[kind])


def test_every_error_and_warning_check_has_a_planted_case():
    """The matrix covers the registry: each error / warning check is planted somewhere, and every case's
    truth names registered checks only."""
    from tlviz.diagnose import CHECK_IDS

    scored, _ = tm._checks()
    planted = set().union(*(c.planted for c in tm.cases(["cnn"])))
    assert {c.id for c in scored} <= planted
    for c in tm.cases():
        assert set(c.planted) | set(c.allowed) <= set(CHECK_IDS), c.label
        assert not set(c.planted) & set(c.allowed), c.label
    assert sum(c.clean for c in tm.cases(["cnn"])) == 6
    # catastrophic-forgetting is scored on the fine-tuning cases, and only there; the others on the files
    runs = [c for c in tm.cases(["cnn"]) if c.run is not None]
    assert {c.name for c in runs if c.planted} and all(c.planted <= set(tm.RUN_CHECKS) for c in runs)
    assert all(c.scores(tm.FORGETTING) and not c.scores("head-frozen") for c in runs)
    assert not any(c.scores(tm.FORGETTING) for c in tm.cases(["cnn"]) if c.run is None)


def test_scoring_counts_allowed_consequences_as_neither():
    case = tm.Case("x", "y", frozenset({"head-frozen"}), setup=None, allowed=frozenset({"no-better-than-chance"}))
    r = tm.Result(case, {"head-frozen": ("error", "t"), "no-better-than-chance": ("error", "t"),
                         "input-resized": ("info", "t")}, {}, 0.0, {"input-resized": True})
    assert r.missed == set() and r.false_alarms == set()
    s = tm.score([r])
    assert (s["per_check"]["head-frozen"].tp, s["overall"].fp, s["overall"].fn) == (1, 0, 0)
    assert s["per_check"]["no-better-than-chance"].tn == 0  # not counted at all
    assert s["info"]["input-resized"].tp == 1
