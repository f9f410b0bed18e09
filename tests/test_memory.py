"""The memory budget and the batch planner: sizes follow the model and the budget, results do not."""

from __future__ import annotations

import numpy as np
import pytest

from tlviz import machine, memory, normalize
from tlviz.diagnose import diagnose


def _conv(size: int, name: str):
    import keras

    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x), name=name)


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv(memory.ENV_MEMORY_MB, "300")
    assert memory.memory_budget_bytes() == 300 * 2**20
    monkeypatch.delenv(memory.ENV_MEMORY_MB)
    assert memory.memory_budget_bytes() == machine.default_memory_mb() * 2**20
    assert machine.MIN_DEFAULT_MB <= machine.default_memory_mb() <= machine.MAX_DEFAULT_MB
    for bad in ("lots", "0", "-5", "nan"):
        monkeypatch.setenv(memory.ENV_MEMORY_MB, bad)
        with pytest.raises(ValueError, match="TLVIZ_MEMORY_MB.*e.g. 1024"):
            memory.memory_budget_bytes()


def test_estimates_follow_the_activation_sizes():
    small, big = _conv(32, "small"), _conv(128, "big")
    for mode in memory.MODES:
        assert memory.activation_bytes(big, mode) == pytest.approx(16 * memory.activation_bytes(small, mode), rel=0.01)
    # a pass that keeps every output costs more than one that frees them; training more again
    b = {m: memory.activation_bytes(big, m) for m in memory.MODES}
    assert b["inference"] <= b["eager"] < b["train"]
    # conv and BN outputs (128x128x8 float32) dominate; a shallow model cannot keep more than all of them
    largest, inp = 128 * 128 * 8 * 4, 128 * 128 * 3 * 4
    assert b["inference"] == min(memory.LIVE_FACTOR * largest, b["eager"] - inp) + inp
    assert 2 * largest < b["eager"] - inp < 2.01 * largest


def test_plan_fits_the_budget_and_caps():
    m = _conv(64, "m")
    per = memory.activation_bytes(m, "inference")
    plan = memory.plan_batch(m, budget=10 * per)
    assert plan.batch_size == 10 and plan.estimated_bytes <= plan.budget and not plan.over_budget
    assert memory.plan_batch(m, budget=10 * per, n=4).batch_size == 4
    assert memory.plan_batch(m, budget=10**12).batch_size == memory.MAX_BATCH
    tiny = memory.plan_batch(m, budget=1)
    assert tiny.batch_size == 1 and tiny.over_budget
    assert "TLVIZ_MEMORY_MB" in plan.describe()
    assert memory.plan_batch(m, "train", budget=10 * per).batch_size < plan.batch_size


def test_tiny_budget_gives_tiny_batches_and_identical_results(loaded_base, base_images, monkeypatch):
    """The whole comparison under a budget of a few images per batch matches the default one."""
    seen = []
    real = memory.plan_batch

    def spy(*a, **k):
        p = real(*a, **k)
        seen.append(p.batch_size)
        return p

    monkeypatch.setattr(memory, "plan_batch", spy)
    default = normalize.analyze(loaded_base, base_images, variants=False)
    big = max(seen)
    seen.clear()
    per = memory.activation_bytes(loaded_base.model, "inference")
    monkeypatch.setenv(memory.ENV_MEMORY_MB, str(3 * per / 2**20))
    small = normalize.analyze(loaded_base, base_images, variants=False)
    assert seen and max(seen) == 3 < big
    for p in default.predictions:
        np.testing.assert_array_equal(small.predictions[p], default.predictions[p])
        np.testing.assert_allclose(small.confidences[p], default.confidences[p], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small.fingerprint.ranking["distance"], default.fingerprint.ranking["distance"],
                               rtol=1e-4)
    assert small.best_preset == default.best_preset == "tf"


def test_probe_features_do_not_depend_on_the_batch(loaded_base, base_images, monkeypatch):
    checks = ["pretraining-no-better-than-random"]
    default = diagnose(loaded_base, base_images, "tf", checks=checks)
    monkeypatch.setenv(memory.ENV_MEMORY_MB, "0.05")
    small = diagnose(loaded_base, base_images, "tf", checks=checks)
    assert default.checks_run == small.checks_run == checks
    assert [f.to_dict() for f in default.findings] == [f.to_dict() for f in small.findings]
