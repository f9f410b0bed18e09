"""The one place tlviz touches Keras internals: the graph history of symbolic tensors, and replaying a
functional model's graph with each layer call replaced.

Keras 3 has no public API for either. Every function here is pinned by ``tests/test_kerasinternals.py``,
which fails with the Keras version named when Keras changes what it relies on.

* `tensor_history(tensor)`: ``(layer, node_index, tensor_index)`` of the call that produced a symbolic tensor;
* `input_tensors_of(layer, node_index)`: the tensors that call received;
* `run_through_graph(model, inputs, operation_fn)`: a functional model's graph applied to `inputs`, each
  operation called through ``operation_fn(op)``.
"""
from __future__ import annotations


def tensor_history(tensor):
    """The call that produced a symbolic Keras tensor (Keras's ``_keras_history``).

    Returns:
        ``(operation, node_index, tensor_index)``, or ``(None, 0, 0)`` for a tensor with no Keras history.
    """
    h = getattr(tensor, "_keras_history", None)
    if h is None:
        return None, 0, 0
    return h.operation, h.node_index, h.tensor_index


def input_tensors_of(operation, node_index: int) -> list:
    """The tensors the `node_index`-th call of `operation` received (Keras's ``_inbound_nodes``); [] if none."""
    nodes = getattr(operation, "_inbound_nodes", None) or []
    node = nodes[node_index] if 0 <= node_index < len(nodes) else None
    return list(getattr(node, "input_tensors", None) or []) if node is not None else []


def run_through_graph(model, inputs: list, operation_fn):
    """Apply a functional model's graph to `inputs`, calling each operation through ``operation_fn(op)``
    (Keras's ``Functional._run_through_graph``)."""
    return model._run_through_graph(inputs, operation_fn=operation_fn)
