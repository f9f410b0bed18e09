"""The planted-fault matrix (``bench/truth/``, ``python -m bench.truth``): every case of the small CNN family.

The small CNN family is trained here (seeded, digits from scikit-learn, about 40 seconds on two cores)
into a temporary folder; each case plants one fault (or is a clean control) and the full diagnosis must
report exactly the planted checks among its errors and warnings (allowed consequences aside). Every case
of the family runs: a case the engine gets wrong today is listed in `OPEN` with what was measured, and
runs as a strict expected failure (it is an open item in the matrix table of docs/diagnose.md; once the engine gets
it right, the test fails until it is moved out of `OPEN`). The bench runs the other families.

A fault under the wrong inference preset (``case@preset``) is judged from its right-preset diagnosis with
`DiagnosisReport.for_preset` (no model pass: the other checks judge the model under the preset it scores
best with), except where no preset is better than chance; one such pair is checked against a fresh run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import truth as tm

ROOT = Path(__file__).resolve().parent.parent

FAMILY = "cnn"
#: Cases of the family the engine gets wrong today: ``{case name: what was measured, and why}``. Each is an
#: open item in the matrix table of docs/diagnose.md.
OPEN: dict[str, str] = {}
CASES = [c.name for c in tm.cases([FAMILY])]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tm.Env(tm.FAMILIES[FAMILY], tmp_path_factory.mktemp("truth_matrix"), log=lambda text: None)


@pytest.fixture(scope="module")
def results() -> dict:
    """Results of the right-preset cases run so far (their reports kept), for their ``@preset`` variants."""
    return {}


def _case(name: str):
    found = [c for c in tm.cases([FAMILY]) if c.name == name]
    assert len(found) == 1, name
    return found[0]


def _result(env, results: dict, name: str):
    case = _case(name)
    if "@" in name:
        base, preset = name.rsplit("@", 1)
        if base in results:
            again = tm.rejudged(results[base], case, preset)
            if again is not None:
                return again
    result = tm.run_case(case, env, keep_report=True)
    results[name] = result
    return result


def _measured(result) -> str:
    return (f"fired {sorted(result.scored_fired)}; missed {sorted(result.missed)} "
            f"(skipped: { {c: result.skipped.get(c) for c in result.missed} }); false alarms "
            f"{ {c: result.fired[c] for c in result.false_alarms} }")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=OPEN[n]))
                                  if n in OPEN else n for n in CASES])
def test_planted_fault_found_and_nothing_else(env, results, name):
    case = _case(name)
    result = _result(env, results, name)
    assert result.error is None, result.error
    assert not result.missed, f"{case.label}: {_measured(result)}"
    assert not result.false_alarms, f"{case.label}: {_measured(result)}"
    if case.clean:
        assert not result.scored_fired, f"{case.label}: {_measured(result)}"


def test_a_rejudged_preset_variant_equals_a_fresh_run(env, results):
    """The shortcut the variants take is exact: a fault under the wrong preset, diagnosed afresh, reports what
    its right-preset diagnosis judged again for that preset reports."""
    name = f"label-order/labels.txt@{tm.FAMILIES[FAMILY].wrong_presets[0]}"
    case = _case(name)
    base = results.get(name.split("@")[0]) or tm.run_case(_case(name.split("@")[0]), env, keep_report=True)
    again = tm.rejudged(base, case, name.split("@")[1])
    fresh = tm.run_case(case, env)
    assert again is not None and fresh.error is None
    assert again.fired == fresh.fired and again.skipped.keys() == fresh.skipped.keys()
    assert {"label-order-mismatch", "normalization-mismatch"} <= fresh.scored_fired


def test_open_items_are_cases_of_the_family():
    assert set(OPEN) <= set(CASES)
    page = (ROOT / "docs" / "diagnose.md").read_text(encoding="utf-8")
    assert "## How far to trust it: a planted-fault matrix" in page
    for name in OPEN:
        assert f"`{FAMILY}/{name}`" in page, f"{name} is open here but not in docs/diagnose.md's matrix section"


def test_the_trained_models_are_good(env):
    """The clean controls mean something only if the models work: the trained model near perfect on its
    own digits, the transfer models far above chance (20 %) on the new ones, the model trained end to end
    (nested base, trainable BatchNormalization) as good as the frozen-base one."""
    for kind, least in (("trained", 0.95), ("phase1", 0.6), ("end_to_end", 0.9)):
        env.path(kind)
        assert env.facts[kind]["held_out_accuracy"] > least, (kind, env.facts[kind])


def test_every_error_and_warning_check_has_a_planted_case():
    """The matrix covers the registry: each error / warning check is planted somewhere, and every case's
    truth names registered checks only."""
    from tlviz.diagnose import CHECK_IDS

    scored, _ = tm.scored_checks()
    planted = set().union(*(c.planted for c in tm.cases([FAMILY])))
    assert {c.id for c in scored} <= planted
    for c in tm.cases():
        assert set(c.planted) | set(c.allowed) <= set(CHECK_IDS), c.label
        assert not set(c.planted) & set(c.allowed), c.label
    assert sum(c.clean for c in tm.cases([FAMILY])) == 7
    # catastrophic-forgetting is scored on the fine-tuning cases, and only there; the others on the files
    runs = [c for c in tm.cases([FAMILY]) if c.run is not None]
    assert {c.name for c in runs if c.planted} and all(c.planted <= set(tm.RUN_CHECKS) for c in runs)
    assert all(c.scores(tm.FORGETTING) and not c.scores("head-frozen") for c in runs)
    assert not any(c.scores(tm.FORGETTING) for c in tm.cases([FAMILY]) if c.run is None)


def test_faults_run_under_the_right_and_the_wrong_preset_in_every_family():
    """Each family has every `WRONG_PRESET_CASES` fault under its first wrong preset (a clean control trained
    end to end among them), and a case where accuracy and the fingerprint disagree about the preset."""
    for fam, f in tm.FAMILIES.items():
        names = {c.name for c in tm.cases([fam])}
        for name, more, _ in tm.WRONG_PRESET_CASES:
            assert {name, f"{name}@{f.wrong_presets[0]}"} <= names, (fam, name)
        assert {f"fingerprint-fooled/{f.preset}-yours", f"fingerprint-fooled/{tm.FOOLED_TOWARD}-yours"} <= names
    assert tm.FAMILIES["sample"].data == "sample" and tm.FAMILIES["sample"].trained_file.exists()


def test_scoring_counts_allowed_consequences_as_neither():
    case = tm.Case("x", "y", frozenset({"head-frozen"}), setup=None, allowed=frozenset({"no-better-than-chance"}))
    r = tm.Result(case, {"head-frozen": ("error", "t"), "no-better-than-chance": ("error", "t"),
                         "input-resized": ("info", "t")}, {}, 0.0, {"input-resized": True})
    assert r.missed == set() and r.false_alarms == set()
    s = tm.score([r])
    assert (s["per_check"]["head-frozen"].tp, s["overall"].fp, s["overall"].fn) == (1, 0, 0)
    assert s["per_check"]["no-better-than-chance"].tn == 0  # not counted at all
    assert s["info"]["input-resized"].tp == 1


def test_an_info_check_raised_to_a_warning_is_scored():
    """A check the registry lists as info may raise a finding to a warning on a measured effect: on a clean
    control that is a false alarm, and the check gets a row of its own."""
    _, info = tm.scored_checks()
    check = info[0].id
    r = tm.Result(tm.Case("x", "clean", frozenset(), setup=None, clean=True), {check: ("warning", "t")}, {}, 0.0)
    assert r.false_alarms == {check}
    s = tm.score([r])
    assert s["per_check"][check].fp == 1 and s["overall"].fp == 1
