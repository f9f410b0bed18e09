"""``python -m tlviz repair MODEL IMAGES --fix ID[,ID...] --out PATH [--preset P] [--json]``: a repaired copy.

Repairs a copy of the model for the findings named (`tlviz.repair.REPAIRS`), proves each repair on
the images (estimated on one seeded half, measured on the other) and writes the copy to ``--out``.
With ``--json`` it prints one object: ``{"applied": [{"id", "before", "after", "n_fit", "n_eval", ...}],
"model_path": PATH, ..., "findings": [...]}``. An unknown repair, one that does not apply to this model and
these images, or an ``--out`` that would overwrite a file exits with status 2 and says why. A repaired
copy that the held-out images show to be worse than the original is still written, but reported as an
error (``repair-worse``) and the status is 1; one not shown to be better is a warning (``repair-unproven``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tlviz.commands import exit_status, findings_json, load_inputs, print_findings
from tlviz.errors import RepairRefused
from tlviz.findings import Finding
from tlviz.presets import PRESETS
from tlviz.progress import reporter_for
from tlviz.repair import DOUBLE_VARIANTS, ORDER, REPAIRS, TARGETS, check_fixes, repair

HELP = "repair a copy of the model for fixable findings, prove it on the images, and save it"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a .keras or .h5 model file (never changed)")
    parser.add_argument("images", help="labelled images: a folder with one sub-folder per class, or a .zip of one")
    parser.add_argument("--fix", required=True, metavar="ID[,ID...]",
                        help="the findings to repair, comma-separated: " + "; ".join(
                            f"{i} ({REPAIRS[i]})" for i in ORDER))
    parser.add_argument("--out", required=True, metavar="PATH", help="where to write the repaired .keras file "
                                                                     "(an existing file is never overwritten)")
    parser.add_argument("--preset", default="unit", choices=PRESETS,
                        help="the normalization preset your inference code applies (default: unit)")
    parser.add_argument("--target", default="raw", choices=TARGETS,
                        help="normalization-mismatch: the repaired model takes raw 0-255 pixels (raw, default) or "
                             "what your code sends (inference)")
    parser.add_argument("--double-normalization", default="drop-layer", choices=DOUBLE_VARIANTS,
                        help="double-normalization: a copy without the model's own input scaling (drop-layer, "
                             "default) or the model unchanged and raw pixels sent (feed-raw)")
    parser.add_argument("--top-block", action="store_true",
                        help="no-trainable-weights / head-frozen: also unfreeze the base's top block")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"applied": [{id, before, after, n_fit, n_eval, ...}], '
                             '"model_path", ..., "findings"}')


def _check_out(out: str, model: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".keras":
        raise RepairRefused(f"--out {out}: the repaired model is a Keras 3 file; give a path ending in `.keras`.")
    if path.exists():
        same = Path(model).exists() and os.path.samefile(path, model)
        raise RepairRefused(f"--out {out} {'is the model itself' if same else 'exists'}; tlviz never overwrites a "
                            "file. Give a new path.")
    if not path.parent.is_dir():
        raise RepairRefused(f"--out {out}: the folder {path.parent} does not exist. Create it or give another path.")
    return path


def run(args) -> int:
    fixes = check_fixes(args.fix)  # unknown ids are refused before anything is loaded
    out = _check_out(args.out, args.model)
    progress = reporter_for(args)
    loaded, _source, images = load_inputs(args.model, args.images, progress)
    result = repair(loaded, images, fixes, args.preset, target=args.target,
                    double_normalization=args.double_normalization, top_block=args.top_block, progress=progress)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(result.model_bytes)
    os.replace(tmp, out)
    progress.close()
    findings = repair_findings(result)
    if args.json:
        print(json.dumps({**result.to_json(str(out)), "findings": findings_json(findings)}))
        return exit_status(findings)
    print(f"Repaired {loaded.name} -> {out}")
    print(result.summary())
    print(f"Order: {result.order_note}")
    print(f"Images: {result.split['how']}.")
    for s in result.steps:
        print(f"\n{s.id}: {s.title}.\n  {s.describe()}")
        for n in s.notes:
            print(f"  note: {n}")
    if findings:
        print()
        print_findings(findings)
    print(f"\nLoad it anywhere with keras.models.load_model({str(out)!r}) (safe_mode=True works).", file=sys.stderr)
    return exit_status(findings)


def repair_findings(result) -> list[Finding]:
    """What the held-out images say about the repaired copy as a whole, as findings.

    Args:
        result: the `tlviz.repair.RepairResult`.

    Returns:
        ``[repair-worse]`` (error) when the 95 % interval of the copy's gain over the original lies
        below zero, ``[repair-unproven]`` (warning) when it reaches zero, else ``[]`` (also when no step is
        meant to change the accuracy, e.g. a freezing repair, or nothing was measured on images).
    """
    o = result.overall
    if not any(s.measure == "accuracy" for s in result.steps) or not o or not o.get("interval") or o.get("before") is None or o.get("after") is None:
        return []
    low, high = o["interval"]
    evidence = {"accuracy_original": o["before"], "accuracy_repaired": o["after"], "interval": [low, high],
                "n_eval": o.get("n_eval"), "inference_preset": result.inference_preset,
                "feed_preset": result.feed_preset}
    gain = f"{(o['after'] - o['before']) * 100:+.1f} points, 95 % interval {low * 100:+.1f} to {high * 100:+.1f}"
    if high < 0:
        return [Finding(
            id="repair-worse", severity="error", area="inference",
            title=f"The repaired copy is worse than the original on {o.get('n_eval')} held-out images ({gain})",
            evidence=evidence,
            fix=(f"Keep the original model. Check that --preset ({result.inference_preset}) is what your inference "
                 "code sends and that the images are labelled like the model's classes, then run `diagnose` to see "
                 "which repair the model needs."))]
    if low <= 0:
        return [Finding(
            id="repair-unproven", severity="warning", area="inference",
            title=f"The held-out images do not show the repaired copy to be better ({gain})",
            evidence=evidence,
            fix="Keep the original unless more images say otherwise (give more labelled images to measure on).")]
    return []
