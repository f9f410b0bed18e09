"""Pins the Keras internals tlviz relies on (`tlviz.kerasinternals`): each test fails, naming the Keras
version, when Keras changes what the adapter reads."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tlviz import kerasinternals as ki  # noqa: E402

WHO = f"Keras {keras.__version__} changed an internal tlviz.kerasinternals relies on"


def _model():
    inp = keras.Input((4,), name="x")
    a = keras.layers.Dense(3, name="a")(inp)
    b = keras.layers.ReLU(name="b")(a)
    out = keras.layers.Add(name="c")([a, b])
    return keras.Model(inp, out)


def test_tensor_history_names_the_layer_and_its_inputs():
    model = _model()
    layer, node, index = ki.tensor_history(model.outputs[0])
    assert layer is model.get_layer("c"), WHO
    assert (node, index) == (0, 0), WHO
    names = [ki.tensor_history(t)[0].name for t in ki.input_tensors_of(layer, node)]
    assert names == ["a", "b"], WHO
    # the input has a history of its own (the InputLayer) and a plain array has none
    assert type(ki.tensor_history(model.inputs[0])[0]).__name__ == "InputLayer", WHO
    assert ki.tensor_history(np.zeros(3)) == (None, 0, 0)
    assert ki.input_tensors_of(layer, 5) == []


def test_a_shared_layer_has_one_node_per_call():
    dense = keras.layers.Dense(2, name="shared")
    x1, x2 = keras.Input((2,)), keras.Input((2,))
    y1, y2 = dense(x1), dense(x2)
    assert ki.tensor_history(y1)[1] == 0 and ki.tensor_history(y2)[1] == 1, WHO
    assert ki.input_tensors_of(dense, 1)[0] is x2, WHO


def test_run_through_graph_calls_every_operation_through_the_hook():
    model = _model()
    seen = []

    def operation_fn(op):
        seen.append(op.name)
        return op

    x = np.ones((2, 4), "float32")
    out = ki.run_through_graph(model, [x], operation_fn)
    out = out[0] if isinstance(out, (list, tuple)) else out
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(x)), rtol=1e-6, err_msg=WHO)
    assert seen == ["a", "b", "c"], WHO
