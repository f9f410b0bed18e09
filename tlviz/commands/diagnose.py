"""``python -m tlviz diagnose MODEL IMAGES [--preset P] [--json] [--html PATH]``: every check, ranked findings.

Exit status: 0 when no finding is an error, 1 when at least one is (so a CI
pipeline can gate on it), 2 for invalid input.
"""

from __future__ import annotations

import json
import sys

from tlviz.commands import load_inputs
from tlviz.diagnose import diagnose
from tlviz.presets import PRESETS
from tlviz.progress import reporter_for

HELP = "run every check on a model and an image set; exit 1 when a finding is an error"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a .keras or .h5 model file")
    parser.add_argument("images", help="labelled images: a folder with one sub-folder per class, or a .zip of one")
    parser.add_argument("--preset", default="unit", choices=PRESETS,
                        help="the normalization preset your inference code applies (default: unit)")
    parser.add_argument("--runs", default=None, metavar="DIR",
                        help="runs folder of `tlviz finetune` whose runs of this model on these images the "
                             "catastrophic-forgetting check judges (default: $TLVIZ_RUNS_DIR, else ~/.tlviz/runs)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"findings": [{id, severity, area, title, evidence, fix}]}')
    parser.add_argument("--html", default=None, metavar="PATH",
                        help="also write the report as one self-contained HTML file (charts, example images and "
                             "where the model looks; opens offline)")


def run(args) -> int:
    progress = reporter_for(args)
    loaded, source, images = load_inputs(args.model, args.images, progress)
    report = diagnose(loaded, images, args.preset, source=source, progress=progress)
    from tlviz.diagnose.forgetting import with_cli_runs

    report = with_cli_runs(report, loaded, images, args.runs)  # catastrophic-forgetting judges fine-tuning runs
    if args.html:
        write_html(args.html, report, images, loaded, progress)
    progress.close()
    if args.json:
        for s in report.skipped:
            print(f"note: skipped {s.id}: {s.reason}", file=sys.stderr)
        print(json.dumps(report.to_json()))
    else:
        print(report.to_markdown())
    return report.exit_code


def write_html(path: str, report, images, loaded, progress=None) -> None:
    """Write `report` as the self-contained HTML file at `path`, Grad-CAM of its example images included."""
    from pathlib import Path

    from tlviz.gradcam import explain
    from tlviz.htmlreport import diagnosis_html, example_items

    items = example_items(report, images)
    gradcam = explain(loaded, images, items) if items else None
    Path(path).write_text(diagnosis_html(report, images, loaded, gradcam), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
