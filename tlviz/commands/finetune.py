"""``python -m tlviz finetune MODEL IMAGES --unfreeze N --lr LR --epochs E ...``: one run, headless.

The run trains in this process, or on the Ray cluster of ``TLVIZ_RAY_ADDRESS`` when it is set (or with
``--executor ray``): then it goes through the same driver as the app's runs (`tlviz.jobs.start_job`)
and lands in the same runs folder; the output is the same, since both are read back from the run's folder.

The Fine-tuning page's run options are flags (`config_from_args` maps them onto `RunConfig`):
``--optimizer``, ``--momentum``, ``--new-head`` / ``--no-new-head``, ``--head-dropout``,
``--weight-decay``, ``--augment``, ``--bn``, ``--two-phase`` (``--head-epochs``, ``--head-lr``),
``--val-fraction``, ``--seed``, ``--label``, ``--unfreeze-frozen``, and ``--no-cache`` (train without
cached base activations). A value outside what `RunConfig` accepts is refused (exit status 2) with the
allowed values.

Every run reports its representation drift (linear CKA per block of the base; ``--json``:
``"representation_drift": [{"block", "cka"}]``, exactly 1.0 for the blocks that did not train), where it
ran (``"executor"``: local or Ray, node, CPU or GPU) and how far each layer's weights moved
(``"weight_change"``: path, role in the model (input / base / head), relative change).
``--control random-init`` (or ``head-only``) runs the same configuration from fresh random weights (or with
the base frozen) right after it and compares the two on the same validation images (``--json``:
``"control": {"val_accuracy", "val_loss", ...}``); ``--original-images DIR`` reports how much of the model's
original task survives (``"retention"``). A run that rebuilt its base without beating its control gets the
``catastrophic-forgetting`` finding.

Exit status (`tlviz.commands`): 1 when a finding is an error (the run did not learn, diverged or failed,
frozen layers moved), else 0; 2 for refused input (nothing is started, no run folder is left).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback

from tlviz.commands import exit_status, findings_json, load_inputs, print_findings
from tlviz.finetune.config import BN_MODES, OPTIMIZERS, RunConfig
from tlviz.findings import Finding, sort_findings
from tlviz.jsonsafe import finite_or_none, json_safe
from tlviz.presets import PRESETS, preset_resize
from tlviz.progress import reporter_for

HELP = "fine-tune a copy of the model on an image set and report the curves; exit 1 when the run did not learn"

#: RunConfig's defaults: the flags' defaults are the page's (never retyped here).
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}
#: The states of a run that measured something (the others are reported as a failed run).
_MEASURED = ("completed", "diverged", "cancelled")


def add_arguments(parser) -> None:
    d = _DEFAULTS
    parser.add_argument("model", help="a .keras or .h5 model file")
    parser.add_argument("images", help="image set: a folder with one sub-folder per class, or a .zip of one")
    parser.add_argument("--unfreeze", type=int, required=True, metavar="N",
                        help="weight-holding base layers to train, counted from the top (0 = head only)")
    parser.add_argument("--lr", type=float, required=True, metavar="LR", help="learning rate, e.g. 1e-3")
    parser.add_argument("--epochs", type=int, required=True, metavar="E", help="epochs to train")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="B",
                        help=f"images per batch (default {d['batch_size']})")
    parser.add_argument("--preset", default=None, choices=PRESETS, metavar="P",
                        help=f"input normalization: {', '.join(PRESETS)} "
                             "(default: the model's recorded preset, else unit)")
    opts = parser.add_argument_group("run options (the Fine-tuning page's)")
    opts.add_argument("--optimizer", choices=OPTIMIZERS, default=d["optimizer"],
                      help=f"adam or sgd (SGD with momentum) (default {d['optimizer']})")
    opts.add_argument("--momentum", type=float, default=None, metavar="M",
                      help=f"momentum of --optimizer sgd, in [0, 1) (default {d['momentum']})")
    opts.add_argument("--new-head", action=argparse.BooleanOptionalAction, default=None,
                      help="replace the classification head by a fresh one for the image set's classes, or keep it "
                           "(--no-new-head) (default: decided as on the page: forced when the class count differs, "
                           "on when the model records other class names)")
    opts.add_argument("--head-dropout", type=float, default=None, metavar="RATE",
                      help=f"dropout of a new head, in [0, 1) (default {d['head_dropout']})")
    opts.add_argument("--weight-decay", type=float, default=d["weight_decay"], metavar="WD",
                      help=f"decoupled weight decay of the optimizer, in [0, 1] (default {d['weight_decay']}: none)")
    opts.add_argument("--augment", action="store_true",
                      help="light augmentation (horizontal flips, shifts up to 10 %%); base activations are then "
                           "not cached, so the run is slower")
    opts.add_argument("--bn", choices=BN_MODES, default=d["bn"],
                      help="BatchNormalization: frozen (inference mode, the Keras guide's advice) or train (unfrozen "
                           f"ones train) (default {d['bn']})")
    opts.add_argument("--two-phase", action="store_true",
                      help="train the head alone first (base frozen), then unfreeze to --unfreeze at --lr")
    opts.add_argument("--head-epochs", type=int, default=None, metavar="E",
                      help=f"epochs of the head phase of --two-phase (default {d['head_epochs']})")
    opts.add_argument("--head-lr", type=float, default=None, metavar="LR",
                      help=f"learning rate of the head phase of --two-phase (default {d['head_lr']:g})")
    opts.add_argument("--val-fraction", type=float, default=d["val_fraction"], metavar="F",
                      help=f"share of each class held out for validation, 0.05 to 0.5 (default {d['val_fraction']})")
    opts.add_argument("--seed", type=int, default=d["seed"], metavar="S",
                      help="seeds the split, the new head, shuffling and dropout (default 0)")
    opts.add_argument("--label", default=d["label"], metavar="TEXT", help="free text shown in the app's run list")
    opts.add_argument("--unfreeze-frozen", action="store_true",
                      help="a model with no trainable weights at all is refused; with this flag the head (and the "
                           "chosen depth) are unfrozen for the run")
    opts.add_argument("--no-cache", action="store_true",
                      help="train the whole model every step instead of reusing the frozen part's activations (same "
                           "results, slower; to rule the cache out)")
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
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"state", "config", "executor", "history", "final", '
                             '"weight_change", "representation_drift", "findings", ...}')
    parser.add_argument("--html", default=None, metavar="PATH",
                        help="also write the run as one self-contained HTML file (its curves, confusion, weight "
                             "changes and drift; opens offline)")


def check_flags(args) -> None:
    """Refuse options that would be silently ignored (before anything is loaded).

    Raises:
        RunRefused: ``--momentum`` without ``--optimizer sgd``, ``--head-epochs`` / ``--head-lr``
            without ``--two-phase``, ``--head-dropout`` with ``--no-new-head``.
    """
    from tlviz.errors import RunRefused

    if args.momentum is not None and args.optimizer != "sgd":
        raise RunRefused("--momentum applies to --optimizer sgd only (Adam has no momentum setting); add "
                         "--optimizer sgd or leave --momentum out.")
    for flag, value in (("--head-epochs", args.head_epochs), ("--head-lr", args.head_lr)):
        if value is not None and not args.two_phase:
            raise RunRefused(f"{flag} sets the head phase of a two-phase run; add --two-phase or leave {flag} out.")
    if args.head_dropout is not None and args.new_head is False:
        raise RunRefused("--head-dropout sets the dropout of a new head, and --no-new-head keeps the model's own: "
                         "leave one of them out.")


def config_from_args(args, recorded_preset: str | None = None) -> RunConfig:
    """The `RunConfig` the flags describe (the page's options, its defaults for the ones not given).

    Args:
        args: the parsed arguments.
        recorded_preset: the preset the model records (the default of ``--preset``). Defaults to `None`.

    Returns:
        The validated config.

    Raises:
        RunRefused: a value `RunConfig` does not accept (the message names the allowed values), or a flag
            that would be ignored (`check_flags`).
    """
    from tlviz.finetune.config import default_preset

    check_flags(args)
    given = {"momentum": args.momentum, "head_dropout": args.head_dropout, "head_epochs": args.head_epochs,
             "head_lr": args.head_lr}
    return RunConfig(unfreeze=args.unfreeze, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=args.optimizer, preset=args.preset or default_preset(None, recorded_preset),
                     val_fraction=args.val_fraction, seed=args.seed, new_head=args.new_head,
                     weight_decay=args.weight_decay, augment=bool(args.augment), bn=args.bn,
                     two_phase=bool(args.two_phase), unfreeze_frozen=bool(args.unfreeze_frozen),
                     use_cache=not args.no_cache, label=args.label,
                     **{k: v for k, v in given.items() if v is not None})


def run(args) -> int:
    from tlviz.contentkeys import pixels_key
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.config import control_config
    from tlviz.jobs.executors import choose_executor
    from tlviz.finetune.preflight import check_run
    from tlviz.finetune.store import runs_dir

    check_flags(args)  # before the model is loaded
    reporter = reporter_for(args)
    loaded, source, images = load_inputs(args.model, args.images, reporter)
    config = config_from_args(args, loaded.recorded_preset)
    resize = preset_resize(config.preset, images.resize)
    if resize != images.resize:  # `teachable`: the images are centre-cropped, as the model's own pipeline does
        reporter(0.0, f"Decoding the images again with the `{config.preset}` preset's resize ({resize})…")
        images = source.load(loaded.image_size, loaded.channels, resize=resize)
    check_run(loaded, images, config)  # refuse before creating a run folder
    original = _original(args, loaded, reporter)
    if args.control:
        control_config(config, args.control)  # refuses a head-only control of a head-only run
    if choose_executor(args.executor) == "ray":
        return _run_on_ray(args, loaded, images, config, reporter, original)
    from tlviz.finetune.device import setup_device
    from tlviz.jobs.executors import local_where

    where = local_where(setup_device())
    key = pixels_key(images.images)
    cache = ActivationCache()  # the control reuses the duplicate groups and cached activations
    original_info = None
    if original is not None:
        original_info = {"source": original.source, "n": len(original), "class_names": original.class_names,
                         "image_key": pixels_key(original.images)}
    root = runs_dir(args.out)

    def one(cfg, label: str):
        """One run in this process; returns ``(trained model or None when it failed, run id)``."""
        from tlviz.errors import TlvizError
        from tlviz.finetune.run import run_finetune
        from tlviz.finetune.store import RunWriter, new_run_id

        writer = RunWriter(root / new_run_id())
        writer.write_config(cfg, {"name": loaded.name, "filename": loaded.filename, "sha256": loaded.sha256,
                                  "metadata": loaded.metadata},
                            {"source": images.source, "n": len(images), "class_names": images.class_names,
                             "image_key": key}, original=original_info)
        writer.status("running", where=where, pid=os.getpid())
        if label and not args.json:
            reporter.echo(label, file=sys.stdout)
        progress = _printer(args, reporter)
        try:
            result = run_finetune(loaded, images, cfg, writer=writer, progress=progress, cache=cache,
                                  image_key=key, original=original)
        except TlvizError as exc:  # refused once it started (e.g. a later phase does not fit in memory): exit 2
            writer.status("refused", str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - a failed run is reported at error level (exit 1), as the app does
            traceback.print_exc(file=sys.stderr)
            writer.status("failed", f"{type(exc).__name__}: {exc}")
            return None, writer.run_id
        except KeyboardInterrupt:
            writer.status("cancelled", "interrupted on the command line")
            raise
        finally:
            writer.close()
        writer.status(result.state, result.findings[0].title if result.findings else "")
        progress({"history": result.history.to_dict(orient="records")})
        return result.model, writer.run_id

    model, run_id = one(config, "")
    control = None
    if args.control and model is not None:
        _, control = one(control_config(config, args.control, run_id),
                         f"-- {args.control} control of run {run_id} --")
    reporter(1.0, "Done.")
    reporter.close()
    return _report(args, root, run_id, model, control, loaded)


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

    from tlviz.errors import RunRefused
    from tlviz.finetune.store import load_run
    from tlviz.jobs import poll, start_job

    job = start_job(loaded, images, [config], root=args.out, executor="ray",
                    controls=[args.control] if args.control else [], original=original)
    seen, shown_where = 0, False
    while True:
        st = poll(job.job_id, args.out)
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
    _echo_epochs(args, reporter, rec.history.to_dict(orient="records"), seen)
    reporter(1.0, "Done.")
    reporter.close()
    if rec.state == "refused":  # the worker refused the configuration: refused input, as a local run
        raise RunRefused(rec.message or st.message)
    control = job.run_ids[1] if len(job.run_ids) > 1 else None
    return _report(args, job.root, rec.run_id, None, control, loaded)


def _verdicts(rec, root, control_id: str | None) -> tuple[dict | None, object]:
    """The control's comparison (a dict) and the catastrophic-forgetting judgement of the run `rec`."""
    from tlviz.diagnose.forgetting import judge_run
    from tlviz.finetune.controls import compare
    from tlviz.finetune.store import load_run

    controls = [load_run(control_id, root)] if control_id else []
    usable = [c for c in controls if c.state in _MEASURED and c.metrics]
    comparison = compare(rec, usable[0]).to_dict() if usable else None
    return comparison, judge_run(rec, usable)


def executor_json(where: dict) -> dict:
    """Where a run ran, as ``finetune --json`` reports it.

    Args:
        where: what the run recorded (`tlviz.finetune.RunRecord.where`).

    Returns:
        ``{"kind": "local" | "ray", "node", "device": "CPU" | "GPU", "device_name", "description"}``
        (``description`` is the line the app shows, e.g. ``local · host · CPU``); a Ray run adds
        ``host`` and ``node_id``. Values not recorded are None.
    """
    from tlviz.finetune.store import describe_where

    out = {"kind": where.get("executor"), "node": where.get("node"), "device": where.get("device"),
           "device_name": where.get("device_name") or None, "description": describe_where(where) or None}
    if where.get("executor") == "ray":
        out.update(host=where.get("host"), node_id=where.get("node_id") or None)
    return out


def weight_change_json(report, model) -> list[dict]:
    """The run's weight-change report (`tlviz.finetune.summary.weight_change`), one dict per layer.

    Args:
        report: the stored report (``path``, ``class``, ``trainable``, ``params``, ``rel_change``, ...),
            or None.
        model: the trained model, whose layer table (`tlviz.layers.layer_table`) gives each layer's role;
            None when it is not at hand (roles are then None).

    Returns:
        ``[{"path", "role", "class", "trainable", "params", "rel_change", "l2_change"}]`` in model order;
        ``role`` is ``input``, ``base`` or ``head``.
    """
    if report is None or not len(report):
        return []
    roles = {}
    if model is not None:
        from tlviz.layers import layer_table

        table = layer_table(model)
        roles = dict(zip(table["path"], table["role"]))
    return [json_safe({"path": str(r["path"]), "role": roles.get(str(r["path"])), "class": str(r["class"]),
                       "trainable": bool(r["trainable"]), "params": int(r["params"]),
                       "rel_change": finite_or_none(r["rel_change"]), "l2_change": finite_or_none(r["l2_change"])})
            for _, r in report.iterrows()]


def _trained_model(rec):
    """The run's saved model (for the roles of its layers), or None when there is none."""
    if rec.model_path is None:
        return None
    from tlviz.models import load_model

    return load_model(str(rec.model_path)).model


def _frozen_moved(rec) -> list[Finding]:
    """``frozen-layers-changed`` (error) when layers frozen in every phase moved: the page shows it as an error."""
    moved = list(rec.outcome.frozen_layers_changed)
    if not moved:
        return []
    return [Finding(
        id="frozen-layers-changed", severity="error", area="finetuning",
        title=f"Layers that were frozen in every phase changed during the run: {', '.join(moved)}",
        evidence={"layers": moved},
        fix=("Freezing did not hold, so the run's comparison of trained and frozen parts is not what it seems. "
             "Check how the model calls these layers (a BatchNormalization layer run in training mode updates its "
             "moving statistics even when frozen; try --bn frozen), and report the run folder if it happens "
             "with frozen BatchNormalization."))]


def _failed(rec) -> Finding:
    """The error-level finding of a run that measured nothing (it failed, or stopped before its first result)."""
    return Finding(
        id="run-failed", severity="error", area="finetuning",
        title=f"The run {rec.state}: {rec.message or 'no reason was recorded'}",
        evidence={"state": rec.state, "epochs_done": int(len(rec.history)), "run_dir": str(rec.path)},
        fix=(f"Nothing was measured. If the message names a setting, change it and start again; otherwise the run "
             f"folder {rec.path} holds what was recorded, and a run that fails again is worth reporting with it."))


def _report(args, root, run_id: str, model, control_id: str | None, loaded=None) -> int:
    """Print the run as it is stored in its folder (the same for a local and a Ray run); return the exit status."""
    from tlviz.finetune.store import load_run

    rec = load_run(run_id, root)
    where = executor_json(rec.where)
    if getattr(args, "html", None):
        from pathlib import Path

        from tlviz.htmlreport import run_html

        Path(args.html).write_text(run_html(rec, loaded), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    if rec.state not in _MEASURED or not rec.metrics:
        findings = [_failed(rec)]
        if args.json:
            print(json.dumps(json_safe({"run_id": rec.run_id, "run_dir": str(rec.path), "state": rec.state,
                                        "message": rec.message, "config": rec.config, "executor": where,
                                        "history": _history_json(rec.history), "findings": findings_json(findings)})))
        else:
            print(f"\n{rec.state.upper()}: {rec.message}")
            print_findings(findings)
            print(f"Run folder: {rec.path}")
        return exit_status(findings)
    out, m = rec.outcome, rec.metrics
    model = model if model is not None else _trained_model(rec)
    comparison, verdict = _verdicts(rec, root, control_id)
    findings = sort_findings(list(out.findings) + _frozen_moved(rec)
                             + ([verdict.finding] if verdict.finding is not None else []))
    weights = weight_change_json(rec.weight_change, model)
    if args.json:
        obj = {
            "run_id": rec.run_id,
            "state": rec.state,
            "config": rec.config,
            "new_head": m.get("new_head"),
            "cache_used": bool(m.get("cache_used")),
            "executor": where,
            "history": _history_json(rec.history),
            "trainable_params": int(m.get("trainable_params") or 0),
            "final": {"val_accuracy": finite_or_none(out.final.get("val_accuracy")),
                      "val_loss": finite_or_none(out.final.get("val_loss"))},
            "frozen_layers_changed": list(out.frozen_layers_changed),
            "weight_change": weights,
            "model_path": str(rec.model_path) if rec.model_path else None,
            "representation_drift": [{"block": d["block"], "cka": finite_or_none(d.get("cka"))} for d in out.drift],
            "notes": list(out.notes),
            "findings": findings_json(findings),
        }
        if comparison is not None:
            obj["control"] = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in comparison.items()}
        if out.retention is not None:
            obj["retention"] = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in out.retention.items()}
        print(json.dumps(json_safe(obj)))
        return exit_status(findings)
    final = out.final
    print(f"\n{rec.state.upper()}: final val accuracy {_fmt(final.get('val_accuracy'))}, "
          f"val loss {_fmt(final.get('val_loss'))}, trainable params {int(m.get('trainable_params') or 0):,}"
          f"{' (cached activations)' if m.get('cache_used') else ''}")
    print(f"run: {_describe(rec)}")
    print(f"ran on: {where['description'] or 'unknown (not recorded)'}")
    for note in out.notes:
        print(f"  note: {note}")
    if out.drift:
        print("representation drift (linear CKA, before vs after; 1.0 = unchanged): "
              + ", ".join(f"{d['block']} {'?' if d.get('cka') is None else format(d['cka'], '.3f')}"
                          for d in out.drift))
    if weights:
        print(_weights_line(weights))
    if out.retention is not None:
        r = out.retention
        print(f"original task ({r.get('source')}): {_pct(r.get('before'))} before, "
              f"{_pct(r.get('after'))} after ({_points(r)} on {r.get('n_images')} images)")
    if comparison is not None:
        print(comparison["sentence"])
    if verdict.fires is None and (comparison is not None or any(d.get("trained") for d in out.drift)):
        print(f"catastrophic-forgetting: {verdict.reason}")
    print_findings(findings)
    print(f"Run folder: {rec.path}\nModel: {rec.model_path}")
    return exit_status(findings)


def _history_json(history) -> list[dict]:
    return [{"epoch": int(r.epoch), "loss": finite_or_none(r.loss), "accuracy": finite_or_none(r.accuracy),
             "val_loss": finite_or_none(r.val_loss), "val_accuracy": finite_or_none(r.val_accuracy)}
            for r in history.itertuples()]


def _describe(rec) -> str:
    """The run's configuration in one line: `RunConfig.describe` plus the options it leaves out."""
    cfg = rec.run_config
    if cfg is None:
        return "(configuration unreadable)"
    new_head = rec.metrics.get("new_head")
    if isinstance(new_head, bool):
        cfg = dataclasses.replace(cfg, new_head=new_head)  # the decision the run made
    extra = [f"batch {cfg.batch_size}"]
    if cfg.augment:
        extra.append("augment")
    extra.append(f"BN {cfg.bn}")
    if cfg.weight_decay:
        extra.append(f"weight decay {cfg.weight_decay:g}")
    if cfg.optimizer == "sgd":
        extra.append(f"momentum {cfg.momentum:g}")
    if not cfg.use_cache:
        extra.append("no activation cache")
    return " · ".join([cfg.describe(), *extra] + ([cfg.label] if cfg.label else []))


def _weights_line(weights: list[dict]) -> str:
    """The weight-change report in words: what moved, by role, and whether the frozen layers stayed put."""
    moved = [w for w in weights if w["rel_change"] is None or w["rel_change"] > 0]
    frozen = [w for w in weights if not w["trainable"]]
    still = sum(1 for w in frozen if w["rel_change"] == 0)
    by_role = {}
    for w in moved:
        by_role[w["role"] or "?"] = by_role.get(w["role"] or "?", 0) + 1
    roles = ", ".join(f"{n} {role}" for role, n in sorted(by_role.items()))
    top = sorted(moved, key=lambda w: -(w["rel_change"] if w["rel_change"] is not None else float("inf")))[:3]
    movers = ", ".join(f"{w['path']} ({w['role'] or '?'}) "
                       f"{'nan' if w['rel_change'] is None else format(w['rel_change'], '.3g')}" for w in top)
    return (f"weight change: {len(moved)} of {len(weights)} layers moved ({roles or 'none'}); "
            f"{still} of {len(frozen)} frozen layers exactly unchanged"
            + (f"; largest relative change: {movers}" if movers else ""))


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
