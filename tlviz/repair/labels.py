"""``label-order-mismatch``: re-order the units of the output Dense layer so outputs follow the image set's classes.

The class order that explains the predictions best (`tlviz.diagnose.best_assignment` on the
confusion matrix) is estimated on the estimation half of the images; the columns of the last
Dense layer's kernel and its bias are permuted accordingly (a single sigmoid unit: both negated,
which swaps its two classes), and the class names are recorded with the model. Measured on the
held-out half.
"""

from __future__ import annotations

import numpy as np

from tlviz.errors import RepairRefused
from tlviz.repair.result import RepairStep

#: Activations under which negating a single unit's logit swaps its two classes.
_SIGN_SAFE = ("sigmoid", "linear")


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", str(act))


def _check_single_unit(model, path: str) -> None:
    """Refuse unless negating the single output unit's logit swaps the two classes."""
    from tlviz.repair.graph import leaf, output_dense

    dense = leaf(model, path)
    _, after = output_dense(model)
    names = [_activation_name(dense)] + [_activation_name(layer) for layer in after if hasattr(layer, "activation")]
    if any(n not in _SIGN_SAFE for n in names):
        raise RepairRefused("`label-order-mismatch`: the model has one output unit with a "
                            f"{', '.join(names)} activation; tlviz swaps the two classes of a single unit only under a "
                            "sigmoid (or no) activation. Swap the class names in your inference code instead.")


def permute_outputs(model, path: str, assignment: np.ndarray) -> None:
    """Make output ``t`` of `model` (changed in place) what output ``assignment[t]`` was.

    Args:
        model: the copy to change.
        path: the output Dense layer's path (`tlviz.repair.graph.output_dense`).
        assignment: a permutation of the classes (two classes and one unit: ``[1, 0]`` negates it).
    """
    import keras

    from tlviz.repair.graph import leaf

    dense = leaf(model, path)
    kernel = keras.ops.convert_to_numpy(dense.kernel)
    bias = keras.ops.convert_to_numpy(dense.bias) if dense.use_bias else None
    if kernel.shape[-1] == 1:
        if list(assignment) == [1, 0]:
            dense.kernel.assign(-kernel)
            if bias is not None:
                dense.bias.assign(-bias)
        return
    perm = np.asarray(assignment, dtype=np.int64)
    dense.kernel.assign(kernel[:, perm])
    if bias is not None:
        dense.bias.assign(bias[perm])


def repair_label_order(chain, output_names: list[str], check_only: bool = False) -> RepairStep | None:
    """Estimate the class order on the estimation half and re-order the output Dense layer's units.

    Args:
        chain: the `tlviz.repair.chain.Chain`.
        output_names: the class name of each output, in the image set's terms (recorded after the repair).
        check_only: only check that the repair applies. Defaults to `False`.

    Returns:
        The `RepairStep` (None with `check_only`); ``details["class_names"]`` are the names to record.

    Raises:
        RepairRefused: no Dense output layer, too few images, or the order already matches.
    """
    from tlviz.diagnose.assignment import best_assignment
    from tlviz.repair.graph import copy_model, output_dense

    path, _ = output_dense(chain.model)
    if chain.k == 2 and _units(chain.model, path) == 1:
        _check_single_unit(chain.model, path)
    chain.require_halves("estimate the class order")
    if check_only:
        return None
    preset = chain.working
    before_model = chain.model
    chain.sub(0.0, 0.5)
    preds = chain.predictions(before_model, preset, "fit")
    labels = chain.labels[chain.fit]
    confusion = np.zeros((chain.k, chain.k), dtype=np.int64)
    np.add.at(confusion, (labels, np.clip(preds, 0, chain.k - 1)), 1)
    assignment = best_assignment(confusion)
    fit_before = float(np.mean(preds == labels))
    fit_after = float(np.mean(preds == assignment[labels]))
    if np.all(assignment == np.arange(chain.k)):
        raise RepairRefused(
            f"`label-order-mismatch`: on the {len(chain.fit)} images the class order is estimated from, the model's "
            f"outputs already follow the image set's classes best (accuracy {fit_before:.1%} fed `{preset}`), so "
            "there is nothing to re-order.")
    new_model = copy_model(before_model)
    permute_outputs(new_model, path, assignment)
    chain.sub(0.5, 1.0)
    cmp = chain.compare((before_model, preset), (new_model, preset))
    chain.model = new_model
    moved = {output_names[t]: output_names[int(assignment[t])] for t in range(chain.k) if assignment[t] != t}
    return RepairStep(
        "label-order-mismatch",
        f"Re-ordered the {chain.k} units of the output layer '{path}' so that its outputs follow the image set's "
        f"classes ('{output_names[0]}', '{output_names[1]}', …; the order estimated on {len(chain.fit)} images)",
        "accuracy", cmp["before"], cmp["after"], cmp["interval"], len(chain.fit), cmp["n_eval"], preset, preset,
        details={"layer": path, "assignment": [int(a) for a in assignment], "class_names": list(output_names),
                 "was_output_of": {output_names[t]: int(assignment[t]) for t in range(chain.k)},
                 "moved": moved, "accuracy_fit_before": fit_before, "accuracy_fit_after": fit_after},
        notes=[("The repaired model's outputs follow this class order, recorded in the file: "
                + ", ".join(f"{i}: {n}" for i, n in enumerate(output_names)) + ".") if _units(new_model, path) > 1 else
               (f"The single output unit now gives the probability of '{output_names[1]}' (below 0.5: "
                f"'{output_names[0]}'), as the image set's class order says.")])


def _units(model, path: str) -> int:
    from tlviz.repair.graph import leaf

    return int(leaf(model, path).kernel.shape[-1])
