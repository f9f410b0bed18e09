"""``python -m tlviz finetune MODEL IMAGES --unfreeze N --lr LR --epochs E ...``: one run, headless.

The run trains in this process, or on the Ray cluster of ``TLVIZ_RAY_ADDRESS`` when it is set (or with
``--executor ray``): then it goes through the same driver as the app's runs (`tlviz.finetune.start_job`)
and lands in the same runs folder; the output is the same.

Every run reports its representation drift (linear CKA per block of the base; ``--json``:
``"representation_drift": [{"block", "cka"}]``, exactly 1.0 for the blocks that did not train).
``--control random-init`` (or ``head-only``) runs the same configuration from fresh random weights (or with
the base frozen) right after it and compares the two on the same validation images (``--json``:
``"control": {"val_accuracy", "val_loss", ...}``); ``--original-images DIR`` reports how much of the model's
original task survives (``"retention"``). A run that rebuilt its base without beating its control gets the
``catastrophic-forgetting`` finding.
"""

from __future__ import annotations

import json
import sys

from tlviz.commands import load_inputs
from tlviz.jsonsafe import finite_or_none
from tlviz.progress import reporter_for

HELP = "fine-tune a copy of the model on an image set and report the curves (the model file is not changed)"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a .keras or .h5 model file")
    parser.add_argument("images", help="image set: a folder with one sub-folder per class, or a .zip of one")
    parser.add_argument("--unfreeze", type=int, required=True, metavar="N",
                        help="weight-holding base layers to train, counted from the top (0 = head only)")
    parser.add_argument("--lr", type=float, required=True, metavar="LR", help="learning rate, e.g. 1e-3")
    parser.add_argument("--epochs", type=int, required=True, metavar="E", help="epochs to train")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="images per batch (default 32)")
    parser.add_argument("--preset", default=None, metavar="P",
                        help="input normalization: raw, unit, tf, torch or caffe "
                             "(default: the model's recorded preset, else unit)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="runs folder to store the run in (default: $TLVIZ_RUNS_DIR or ~/.tlviz/runs)")
    parser.add_argument("--executor", choices=("local", "ray"), default=None,
                        help="where the run trains: this process (local) or the Ray cluster of TLVIZ_RAY_ADDRESS "
                             "(ray). Default: ray when TLVIZ_RAY_ADDRESS is set, else local")
    parser.add_argument("--control", choices=("random-init", "head-only"), default=None,
                        help="also run a control after the run and compare the two on the same validation images: "
                             "random-init (the same configuration from fresh random weights: do the pre-trained "
                             "weights help at all?) or head-only (the base frozen: does unfreezing help?)")
    parser.add_argument("--original-images", default=None, metavar="DIR",
                        help="the image set of the model's original task (its classes are the model's outputs): "
                             "report how much of that task's accuracy survives the run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args) -> int:
    from tlviz.finetune.cache import ActivationCache, images_key
    from tlviz.finetune.config import RunConfig, control_config, default_preset
    from tlviz.finetune.run import check_run, run_finetune
    from tlviz.finetune.store import RunWriter, new_run_id, runs_dir

    reporter = reporter_for(args)
    loaded, _, images = load_inputs(args.model, args.images, reporter)
    config = RunConfig(unfreeze=args.unfreeze, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                       preset=args.preset or default_preset(None, loaded.recorded_preset))
    check_run(loaded, images, config)  # refuse before creating a run folder
    original = _original(args, loaded, reporter)
    if args.control:
        control_config(config, args.control)  # refuses a head-only control of a head-only run
    from tlviz.finetune.executors import choose_executor

    if choose_executor(args.executor) == "ray":
        return _run_on_ray(args, loaded, images, config, reporter, original)
    key = images_key(images.images)
    cache = ActivationCache()  # the control reuses the duplicate groups and cached activations
    original_info = None
    if original is not None:
        original_info = {"source": original.source, "n": len(original), "class_names": original.class_names,
                         "image_key": images_key(original.images)}

    def one(cfg, label: str):
        writer = RunWriter(runs_dir(args.out) / new_run_id())
        writer.write_config(cfg, {"name": loaded.name, "filename": loaded.filename, "sha256": loaded.sha256,
                                  "metadata": loaded.metadata},
                            {"source": images.source, "n": len(images), "class_names": images.class_names,
                             "image_key": key}, original=original_info)
        writer.status("running")
        if label and not args.json:
            reporter.echo(label, file=sys.stdout)
        progress = _printer(args, reporter)
        try:
            result = run_finetune(loaded, images, cfg, writer=writer, progress=progress, cache=cache,
                                  image_key=key, original=original)
        except BaseException as exc:
            writer.status("failed", str(exc))
            raise
        writer.status(result.state, result.findings[0].title if result.findings else "")
        progress({"history": result.history.to_dict(orient="records")})
        return result, writer

    result, writer = one(config, "")
    control = None
    if args.control:
        _, cwriter = one(control_config(config, args.control, writer.run_id),
                         f"-- {args.control} control of run {writer.run_id} --")
        control = cwriter.run_id
    reporter(1.0, "Done.")
    reporter.close()
    return _report(args, result.state, result.history, int(result.trainable_params), result.final,
                   list(result.frozen_layers_changed), result.model_path, result.cache_used, result.notes,
                   result.findings, writer.dir, result.drift, result.retention, control)


def _original(args, loaded, reporter):
    """The original task's image set of ``--original-images``, checked against the model (None when not given)."""
    if not args.original_images:
        return None
    from tlviz.finetune.retention import original_labels
    from tlviz.imagesets import open_source

    reporter(0.0, "Loading the original task's images…")
    original = open_source(args.original_images).load(loaded.image_size, loaded.channels)
    original_labels(loaded, original)  # refuses a set that is not the model's own task
    return original


def _echo_epochs(args, reporter, hist: list, seen: int) -> int:
    """Print the epochs of `hist` after the first `seen` (text mode); return how many are printed now."""
    while not args.json and seen < len(hist):
        e = hist[seen]
        seen += 1
        reporter.echo(f"epoch {e['epoch']:>3}  loss {_fmt(e['loss'])}  acc {_fmt(e['accuracy'])}  "
                      f"val_loss {_fmt(e['val_loss'])}  val_acc {_fmt(e['val_accuracy'])}", file=sys.stdout)
    return seen


def _printer(args, reporter):
    """A progress callback for `run_finetune`: one line per epoch (text mode) and the progress line."""
    seen = [0]

    def progress(info):
        seen[0] = _echo_epochs(args, reporter, info.get("history") or [], seen[0])
        if "stage" in info:
            reporter(*_step(info))

    return progress


def _run_on_ray(args, loaded, images, config, reporter, original=None) -> int:
    """The run on the Ray cluster, through the app's driver; printed as a local run is."""
    import time

    from tlviz.errors import TlvizError
    from tlviz.finetune.store import load_run
    from tlviz.finetune.worker import poll_job, start_job

    job = start_job(loaded, images, [config], root=args.out, executor="ray",
                    controls=[args.control] if args.control else [], original=original)
    seen, shown_where = 0, False
    while True:
        st = poll_job(job.job_id, args.out)
        rec = st.runs[0] if st.runs else None
        if rec is not None:
            if not shown_where and rec.where.get("device", "?") != "?":
                reporter.echo(f"running on {rec.ran_on}", file=sys.stderr)
                shown_where = True
            seen = _echo_epochs(args, reporter, rec.history.to_dict(orient="records"), seen)
        if rec is not None and rec.progress:
            reporter(*_step(rec.progress))
        else:
            reporter(None, st.text, "")
        if not st.active:
            break
        time.sleep(0.3)
    rec = load_run(job.run_ids[0], job.root)
    seen = _echo_epochs(args, reporter, rec.history.to_dict(orient="records"), seen)
    reporter(1.0, "Done.")
    reporter.close()
    if rec.state not in ("completed", "diverged", "cancelled") or not rec.metrics:
        raise TlvizError(f"The run on the Ray cluster {rec.state}: {rec.message or st.message}")
    out = rec.outcome
    return _report(args, rec.state, rec.history, int(rec.metrics.get("trainable_params") or 0), out.final,
                   out.frozen_layers_changed, rec.model_path, bool(rec.metrics.get("cache_used")), out.notes,
                   out.findings, rec.path, out.drift, out.retention, job.run_ids[1] if len(job.run_ids) > 1 else None)


def _verdicts(run_dir, control_id: str | None) -> tuple[dict | None, list]:
    """The control's comparison (a dict) and the catastrophic-forgetting finding(s) of the run in `run_dir`."""
    from pathlib import Path

    from tlviz.diagnose.forgetting import judge_run
    from tlviz.finetune.controls import compare
    from tlviz.finetune.store import load_run

    root = Path(run_dir).parent
    rec = load_run(Path(run_dir).name, root)
    controls = [load_run(control_id, root)] if control_id else []
    comparison = compare(rec, controls[0]).to_dict() if controls else None
    verdict = judge_run(rec, controls)
    return comparison, verdict


def _report(args, state, history, trainable_params, final, frozen_changed, model_path, cache_used, notes, findings,
            run_dir, drift=(), retention=None, control_id=None) -> int:
    comparison, verdict = _verdicts(run_dir, control_id)
    findings = list(findings) + ([verdict.finding] if verdict.finding is not None else [])
    if args.json:
        obj = {
            "history": [{"epoch": int(r.epoch), "loss": finite_or_none(r.loss),
                         "accuracy": finite_or_none(r.accuracy), "val_loss": finite_or_none(r.val_loss),
                         "val_accuracy": finite_or_none(r.val_accuracy)}
                        for r in history.itertuples()],
            "trainable_params": int(trainable_params),
            "final": {"val_accuracy": finite_or_none(final.get("val_accuracy")),
                      "val_loss": finite_or_none(final.get("val_loss"))},
            "frozen_layers_changed": list(frozen_changed),
            "model_path": str(model_path),
            "representation_drift": [{"block": d["block"], "cka": finite_or_none(d.get("cka"))} for d in drift],
            "findings": [f.id for f in findings],
        }
        if comparison is not None:
            obj["control"] = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in comparison.items()}
        if retention is not None:
            obj["retention"] = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in retention.items()}
        print(json.dumps(obj))
        return 0
    print(f"\n{state.upper()}: final val accuracy {_fmt(final.get('val_accuracy'))}, "
          f"val loss {_fmt(final.get('val_loss'))}, trainable params {trainable_params:,}"
          f"{' (cached activations)' if cache_used else ''}")
    for note in notes:
        print(f"  note: {note}")
    if drift:
        print("representation drift (linear CKA, before vs after; 1.0 = unchanged): "
              + ", ".join(f"{d['block']} {'?' if d.get('cka') is None else format(d['cka'], '.3f')}" for d in drift))
    if retention is not None:
        print(f"original task ({retention.get('source')}): {_pct(retention.get('before'))} before, "
              f"{_pct(retention.get('after'))} after ({_points(retention)} on {retention.get('n_images')} images)")
    if comparison is not None:
        print(comparison["sentence"])
    if verdict.fires is None and (comparison is not None or any(d.get("trained") for d in drift)):
        print(f"catastrophic-forgetting: {verdict.reason}")
    for f in findings:
        print(f"{f.severity.upper()}: {f.title}. {f.fix}".rstrip(". ") + ".")
    if frozen_changed:
        print(f"WARNING: frozen layers changed: {', '.join(frozen_changed)}", file=sys.stderr)
    print(f"Run folder: {run_dir}\nModel: {model_path}")
    return 0


def _step(info: dict) -> tuple[float | None, str, str]:
    """``(fraction, text, detail)`` for the progress reporter from `run_finetune`'s progress dict.

    The text changes once per epoch (or stage), the detail every batch.
    """
    total = info.get("total_batches") or 0
    fraction = info.get("batches_done", 0) / total if total else None
    stage = info.get("stage", "")
    if stage in ("head", "main"):
        text = f"Epoch {info.get('epoch', 0)} of {info.get('epochs', '?')}" + (" (head only)" if stage == "head" else "")
        detail = f"batch {info.get('batch', 0)}/{info.get('batches', '?')}"
        if info.get("eta_s") is not None:
            eta = int(info["eta_s"])
            detail += f", {eta // 60}:{eta % 60:02d} left"
    else:
        message = info.get("message") or stage or "working"
        text, detail = message[:1].upper() + message[1:] + "…", ""
    return fraction, text, detail


def _pct(v) -> str:
    v = finite_or_none(v)
    return "?" if v is None else f"{v:.1%}"


def _points(r: dict) -> str:
    from tlviz.stats import format_points

    d, lo, hi = (finite_or_none(r.get(k)) for k in ("difference", "low", "high"))
    if d is None or lo is None or hi is None:
        return "difference unknown"
    return f"{d * 100:+.1f} points, 95 % interval {format_points(lo, hi)}"


def _fmt(v) -> str:
    v = finite_or_none(v)
    return "  nan " if v is None else f"{v:.4f}"
