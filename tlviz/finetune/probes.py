"""The measurements every run makes around its training: representation drift and original-task retention.

Each is taken in two halves: the features and predictions before training (`start_probes`, then
`drift_before` once the last phase's cut is known), the comparison after it (`finish_probes`). A
measurement that cannot be made leaves a note for the user and never stops the run. The measurements
themselves are `tlviz.finetune.drift.DriftProbe` and `tlviz.finetune.retention.RetentionProbe`.

Public API: `start_probes`, `drift_before`, `finish_probes`.
"""

from __future__ import annotations

import time

import pandas as pd

from tlviz.finetune.cache import Cut
from tlviz.finetune.config import RunConfig


def start_probes(model, loaded, images, original, config: RunConfig, cache, model_key: str, img_key: str,
                 budget: int, may_train: set[str], notes: list[str], seconds: dict, cut: Cut | None = None):
    """The drift and retention measurements' first halves (features and predictions before the run).

    Args:
        model: the run's model, before it trains.
        loaded: the `tlviz.models.LoadedModel` the run started from.
        images: the run's `tlviz.imagesets.ImageSet`.
        original: the original task's image set, or None (retention is not measured).
        config: the `RunConfig`.
        cache: the run's `ActivationCache`.
        model_key: the key of the weights the run starts from.
        img_key: `tlviz.contentkeys.pixels_key` of the images.
        budget: the memory budget in bytes.
        may_train: paths of the layers that train in some phase.
        notes: a measurement that cannot be made says so here.
        seconds: the time each took goes here (``drift``, ``retention``).
        cut: the last phase's cut: with one, the drift's features before the run come from its
            activations (`drift_before`), computed anyway. Defaults to `None`.

    Returns:
        ``(DriftProbe or None, RetentionProbe or None)``.
    """
    from tlviz.errors import TlvizError
    from tlviz.finetune.drift import DriftProbe

    drift = retention = None
    t = time.monotonic()
    try:  # with a cut, the features before come from its activations (`drift_before`), computed anyway
        drift = DriftProbe(model, images.images, images.labels, config.preset, may_train, cache, model_key, img_key,
                           budget, defer=cut is not None)
    except Exception as exc:  # noqa: BLE001 - an unusual graph: say so, train anyway
        notes.append(f"The representation drift could not be measured ({type(exc).__name__}: {str(exc)[:160]}).")
    seconds["drift"] = round(time.monotonic() - t, 3)
    if original is not None:
        from tlviz.finetune.retention import RetentionProbe

        t = time.monotonic()
        if config.random_init:
            notes.append("Original-task retention is not measured for a random-init control: its base never held "
                         "the original task.")
        else:
            try:
                retention = RetentionProbe(loaded, original, config.preset, cache, budget, cut)
            except TlvizError as exc:
                notes.append(f"Original-task retention not measured: {exc}")
        seconds["retention"] = round(time.monotonic() - t, 3)
    return drift, retention


def drift_before(drift_probe, cut: Cut | None, activations, notes: list[str]) -> None:
    """The drift's features before the run, from the last phase's cut when it has one (before it trains).

    Args:
        drift_probe: the `DriftProbe`, or None (nothing to do).
        cut: the last phase's cut, or None (the features come from the pixels).
        activations: the cached activations at `cut`.
        notes: a measurement that fails says so here.
    """
    if drift_probe is None or not drift_probe.missing:
        return
    try:
        if cut is not None:
            drift_probe.before_from_cut(cut, activations)
        else:
            drift_probe.compute_before()
    except Exception as exc:  # noqa: BLE001 - never stop a run for a measurement
        notes.append(f"The representation drift could not be measured ({type(exc).__name__}: {str(exc)[:160]}).")


def finish_probes(drift_probe, retention_probe, model, report: pd.DataFrame, notes: list[str], seconds: dict,
                  cut: Cut | None = None, activations=None) -> tuple[list[dict], dict | None]:
    """The drift and retention measurements' second halves, on the trained model.

    Args:
        drift_probe: the `DriftProbe`, or None.
        retention_probe: the `RetentionProbe`, or None.
        model: the trained model.
        report: the run's weight-change report (`tlviz.finetune.summary.weight_change`).
        notes: a measurement that fails says so here.
        seconds: the time each took is added here.
        cut: the last phase's cut: the measurements run above it, from its cached activations. Defaults to
            `None`.
        activations: the activations at `cut`. Defaults to `None`.

    Returns:
        ``(drift rows, retention dict or None)``.
    """
    def attempt(what: str, measure):
        try:
            return measure()
        except Exception as exc:  # noqa: BLE001 - a measurement that fails leaves the run intact, with a note
            notes.append(f"{what} could not be measured after training ({type(exc).__name__}: {str(exc)[:160]}).")
            return None

    drift, retention = [], None
    if drift_probe is not None:
        drift = attempt("The representation drift", lambda: drift_probe.measure(report, cut, activations)) or []
        seconds["drift"] = round(drift_probe.seconds, 3)
    if retention_probe is not None:
        t = time.monotonic()
        retention = attempt("Original-task retention", lambda: retention_probe.measure(model, report, cut))
        seconds["retention"] = round(seconds.get("retention", 0.0) + time.monotonic() - t, 3)
    return drift, retention
