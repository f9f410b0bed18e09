"""`diagnose`: run the registered checks on one model and one image set, and report.

Every check runs even when another fails: a check that cannot run is
skipped with its sentence (`CheckSkipped`), and one that fails unexpectedly is
skipped with the error; only `DiagnosisRefused` (the inputs cannot be diagnosed
at all) stops the diagnosis.
"""

from __future__ import annotations

import time
from typing import Callable

from tlviz.diagnose.base import SkippedCheck, in_report_order
from tlviz.diagnose.context import DiagnosisContext, check_preset
from tlviz.diagnose.registry import CHECK_IDS, CHECKS, CHECKS_BY_ID
from tlviz.diagnose.report import DiagnosisReport
from tlviz.errors import CheckSkipped, DiagnosisRefused
from tlviz.findings import Finding
from tlviz.imagesets import ImageSet


def diagnose(loaded_model, image_set: ImageSet, inference_preset: str = "unit",
             progress: Callable[[float, str], None] | None = None, source=None, *,
             checks: list[str] | tuple[str, ...] | None = None, normalization=None) -> DiagnosisReport:
    """Run every check on a model and an image set.

    The loaded model is never modified (checks that need ``training=True`` work
    on a clone).

    Args:
        loaded_model: a `tlviz.models.LoadedModel` (or a Keras model).
        image_set: an `ImageSet` decoded at the model's input size.
        inference_preset: the preset the user's inference code applies (one of
            `tlviz.presets.PRESETS`). Defaults to `"unit"`.
        progress: called as ``progress(fraction, text)`` while the checks run.
            Defaults to `None`.
        source: the `ImageSource` the images came from; enables the resize-method
            comparison. Defaults to `None`.
        checks: run only these check ids (see `CHECK_IDS`). Defaults to all.
        normalization: a `tlviz.normalize.NormalizationReport` already measured on
            the same model and image set (e.g. by the Normalization page); it is
            reused instead of evaluating every preset again. Defaults to `None`.

    Returns:
        A `DiagnosisReport`: findings most severe first, skipped checks with reasons.

    Raises:
        DiagnosisRefused: the images do not fit the model, the image set is
            empty, or the preset is unknown or does not apply.
    """
    from tlviz.models import LoadedModel, summarize

    t_start = time.perf_counter()
    loaded = loaded_model if isinstance(loaded_model, LoadedModel) else summarize(loaded_model)
    if not isinstance(image_set, ImageSet):
        raise DiagnosisRefused("Pass the images as a tlviz ImageSet (tlviz.imagesets.load_image_set at the model's "
                               "input size).")
    if not len(image_set):
        raise DiagnosisRefused("The image set is empty. Give at least one image.")
    got = tuple(image_set.images.shape[1:])
    for want, have in zip(loaded.input_shape, got):
        if want is not None and int(want) != int(have):
            raise DiagnosisRefused(
                f"The images are {'x'.join(map(str, got))} but {loaded.name} expects "
                f"{'x'.join('?' if d is None else str(d) for d in loaded.input_shape)}. Decode them at the model's "
                "input size (ImageSource.load(loaded.image_size, loaded.channels)).")
    check_preset(inference_preset, got[-1])
    selected = list(CHECKS)
    if checks is not None:
        unknown = [c for c in checks if c not in CHECKS_BY_ID]
        if unknown:
            raise ValueError(f"Unknown check id(s): {', '.join(unknown)}. Use: {', '.join(CHECK_IDS)}.")
        selected = [c for c in CHECKS if c.id in set(checks)]

    say = progress or (lambda fraction, text: None)
    total = len(selected)
    findings: list[Finding] = []
    skipped: list[SkippedCheck] = []
    ran: list[str] = []
    seconds: dict[str, float] = {}
    state = {"k": 0, "title": ""}

    def sub(fraction: float, text: str) -> None:
        say((state["k"] + fraction) / total, f"Check {state['k'] + 1} of {total} ({state['title']}): {text}")

    ctx = DiagnosisContext(loaded, image_set, inference_preset, source=source, progress=sub)
    if normalization is not None:
        if list(normalization.files) != list(image_set.files) or normalization.model_name != loaded.name:
            raise ValueError("The normalization report passed was measured on another model or image set; pass "
                             "the report of this model and image set, or none.")
        ctx.__dict__["normalization"] = normalization  # the cached property, already measured
    for k, check in enumerate(selected):
        state.update(k=k, title=check.title)
        say(k / total, f"Check {k + 1} of {total}: {check.title}…")
        t0 = time.perf_counter()
        try:
            findings += check(ctx)
            ran.append(check.id)
        except CheckSkipped as exc:
            skipped.append(SkippedCheck(check.id, check.title, str(exc)))
        except DiagnosisRefused:
            raise
        except Exception as exc:  # a failing check must not hide the others
            skipped.append(SkippedCheck(check.id, check.title,
                                        f"The check failed: {type(exc).__name__}: {str(exc)[:200]}"))
        seconds[check.id] = time.perf_counter() - t0
    say(1.0, "Done.")
    seconds["total"] = time.perf_counter() - t_start

    evidence = None
    if "normalization" in ctx.__dict__ or any(c.preset_dependent for c in selected):
        try:
            evidence = ctx.preset_evidence
        except DiagnosisRefused:
            evidence = None
    return DiagnosisReport(
        findings=in_report_order(findings),
        skipped=skipped,
        checks_run=ran,
        model_name=loaded.name,
        model_file=loaded.filename,
        model_sha256=loaded.sha256,
        images_source=image_set.source,
        n_images=len(image_set),
        class_names=list(image_set.class_names),
        counts=image_set.counts,
        inference_preset=inference_preset,
        expected_preset=evidence.best if evidence else None,
        expected_by=evidence.best_by if evidence else None,
        seconds=seconds,
        evidence=evidence,
    )
