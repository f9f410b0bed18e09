"""``python -m tlviz repair MODEL IMAGES --fix ID[,ID...] --out PATH [--preset P] [--json]``: a repaired copy.

Repairs a copy of the model for the findings named (`tlviz.repair.REPAIRS`), proves each repair on
the images (estimated on one seeded half, measured on the other) and writes the copy to ``--out``.
With ``--json`` it prints one object: ``{"applied": [{"id", "before", "after", "n_fit", "n_eval", ...}],
"model_path": PATH, ...}``. An unknown repair, one that does not apply to this model and these
images, or an ``--out`` that would overwrite a file exits with status 2 and says why.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tlviz.commands import load_inputs
from tlviz.errors import RepairRefused
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
                             '"model_path"}')


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
    if args.json:
        print(json.dumps(result.to_json(str(out))))
        return 0
    print(f"Repaired {loaded.name} -> {out}")
    print(result.summary())
    print(f"Order: {result.order_note}")
    print(f"Images: {result.split['how']}.")
    for s in result.steps:
        print(f"\n{s.id}: {s.title}.\n  {s.describe()}")
        for n in s.notes:
            print(f"  note: {n}")
    print(f"\nLoad it anywhere with keras.models.load_model({str(out)!r}) (safe_mode=True works).", file=sys.stderr)
    return 0
