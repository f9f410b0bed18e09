"""The label-order assignment is exact for any number of classes, with or without SciPy."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tlviz.diagnose import best_assignment
from tlviz.diagnose.assignment import min_cost_assignment

ROOT = Path(__file__).resolve().parent.parent


def _brute_best(c: np.ndarray) -> float:
    k = len(c)
    return max(c[np.arange(k), list(p)].sum() for p in itertools.permutations(range(k)))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_matches_an_exhaustive_search(k):
    rng = np.random.default_rng(k)
    for _ in range(40):
        c = rng.integers(0, 20, (k, k))
        perm = best_assignment(c)
        assert sorted(perm.tolist()) == list(range(k))
        assert c[np.arange(k), perm].sum() == _brute_best(c)


def test_real_valued_costs_are_minimised():
    rng = np.random.default_rng(3)
    for _ in range(30):
        c = rng.normal(size=(6, 6))
        perm = min_cost_assignment(c)
        best = min(c[np.arange(6), list(p)].sum() for p in itertools.permutations(range(6)))
        assert c[np.arange(6), perm].sum() == pytest.approx(best)


def _greedy_trap(k: int) -> np.ndarray:
    """A matrix on which taking the largest cell first is wrong: greedy gets 10 + 1s, the optimum 9 + 9."""
    c = np.eye(k, dtype=np.int64)
    c[0, 0], c[0, 1], c[1, 0], c[1, 1] = 10, 9, 9, 0
    return c


def test_exact_beyond_eight_classes_where_a_greedy_match_is_not():
    c = _greedy_trap(12)
    perm = best_assignment(c)
    assert c[np.arange(12), perm].sum() == 9 + 9 + 10  # 9 + 9 on the swapped pair, 1 on each of the other ten
    shuffled = np.eye(40, dtype=np.int64)[np.random.default_rng(2).permutation(40)] * 50
    perm = best_assignment(shuffled)
    assert shuffled[np.arange(40), perm].sum() == 40 * 50


def test_same_answer_as_scipy_when_it_is_installed():
    scipy_opt = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(7)
    for k in (9, 15, 30):
        c = rng.integers(0, 60, (k, k))
        rows, cols = scipy_opt.linear_sum_assignment(-c)
        assert c[np.arange(k), best_assignment(c)].sum() == c[rows, cols].sum()


def test_exact_on_an_install_without_scipy():
    code = (
        "import sys; sys.modules['scipy'] = None; sys.modules['scipy.optimize'] = None\n"
        "import numpy as np\n"
        "from tlviz.diagnose.assignment import best_assignment\n"
        "c = np.eye(12, dtype=np.int64); c[0, 0], c[0, 1], c[1, 0], c[1, 1] = 10, 9, 9, 0\n"
        "print(int(c[np.arange(12), best_assignment(c)].sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "28"


def test_refuses_what_is_not_a_square_count_matrix():
    with pytest.raises(ValueError, match="square"):
        best_assignment(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        best_assignment(np.array([[1.0, np.nan], [0.0, 1.0]]))
