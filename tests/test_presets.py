"""One preset implementation: the same numbers from NumPy arrays, eager tensors and a tf.data graph."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from tlviz.presets import PRESETS, CustomPreset, apply_preset

ROOT = Path(__file__).resolve().parent.parent
ALL = list(PRESETS) + [CustomPreset(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))]


def _batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("preset", ALL, ids=lambda p: p if isinstance(p, str) else "custom")
def test_tensor_and_tf_data_give_the_numpy_numbers(preset):
    import tensorflow as tf

    x = _batch()
    expected = apply_preset(x, preset)
    assert expected.dtype == np.float32 and expected.shape == x.shape
    eager = apply_preset(tf.constant(x), preset)
    assert isinstance(eager, tf.Tensor) and eager.dtype == tf.float32
    np.testing.assert_allclose(eager.numpy(), expected, rtol=1e-6, atol=1e-5)
    ds = tf.data.Dataset.from_tensors(x).map(lambda a: apply_preset(a, preset))  # traced: a symbolic tensor
    np.testing.assert_allclose(next(iter(ds)).numpy(), expected, rtol=1e-6, atol=1e-5)


def test_known_values():
    x = np.array([[[[0, 127, 255]]]], dtype=np.uint8)
    np.testing.assert_allclose(apply_preset(x, "raw"), [[[[0, 127, 255]]]])
    np.testing.assert_allclose(apply_preset(x, "unit"), [[[[0, 127 / 255, 1]]]], rtol=1e-6)
    np.testing.assert_allclose(apply_preset(x, "tf"), [[[[-1, 127 / 127.5 - 1, 1]]]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(apply_preset(x, "teachable"), apply_preset(x, "tf"))
    caffe = apply_preset(x, "caffe")  # BGR: the first output channel is the blue input, mean-subtracted
    assert caffe[0, 0, 0, 0] == pytest.approx(255 - 103.939, abs=1e-3)


def test_input_is_never_modified_and_bad_presets_are_named():
    x = _batch()
    before = x.copy()
    for preset in ALL:
        apply_preset(x, preset)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError, match="Unknown preset 'nope'. Use one of: raw"):
        apply_preset(x, "nope")
    with pytest.raises(ValueError, match="needs 3-channel"):
        apply_preset(x[..., :1], "torch")
    with pytest.raises(ValueError, match="must not contain 0"):
        apply_preset(x, CustomPreset(std=(1.0, 0.0, 1.0)))


def test_no_second_implementation_of_the_preset_arithmetic():
    """Only tlviz/presets.py calls Keras's preprocess_input (the repair's affine maps read it through
    apply_preset); nothing else in the engine, the pages or the benchmarks re-implements a preset."""
    callers = []
    for folder in ("tlviz", "ui", "pages", "bench", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr == "preprocess_input":
                    callers.append(str(path.relative_to(ROOT)))
                if isinstance(node, ast.FunctionDef) and "preset" in node.name and "tf" in node.name.split("_"):
                    callers.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert sorted(set(callers)) == ["tlviz/presets.py"], callers
