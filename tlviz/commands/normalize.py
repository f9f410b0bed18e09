"""``python -m tlviz normalize MODEL IMAGES [--json]``: which preprocessing the model expects.

Judges ``--inference-preset`` (what the user's code sends) against it: exit status 1 when a finding is an
error (``preset-mismatch`` measured on the images, ``double-normalization``), else 0; 2 for refused input.
``--json`` skips the resize and channel-order variants, so their (warning-level) findings appear in the
text output only; the exit status is the same either way.
"""

from __future__ import annotations

import json
import sys

from tlviz.commands import exit_status, findings_json, load_inputs
from tlviz.normalize import NormalizationRefused, analyze, custom_preset, normalization_findings
from tlviz.presets import PRESETS, CustomPreset, applicable_presets
from tlviz.progress import reporter_for

HELP = "evaluate the model under each input normalization preset and rank them (plus a label-free fingerprint)"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a .keras or .h5 model file")
    parser.add_argument("images", help="labelled images: a folder with one sub-folder per class, or a .zip of one")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"results", "best", ..., "findings"} (presets only; resize / '
                             'channel-order variants are skipped)')
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the resize-method and channel-order variants")
    parser.add_argument("--inference-preset", default="unit", choices=PRESETS,
                        help="the preset your inference code applies, to check it (default: unit)")
    parser.add_argument("--custom-scale", default=None,
                        help="also try a custom preset (x * SCALE - MEAN) / STD; SCALE defaults to 1/255")
    parser.add_argument("--custom-mean", default=None, help="custom preset mean: one value or R,G,B (default 0)")
    parser.add_argument("--custom-std", default=None, help="custom preset std: one value or R,G,B (default 1)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: planned from TLVIZ_MEMORY_MB and the model's size)")


def custom_from_args(args) -> CustomPreset | None:
    """The `CustomPreset` described by the ``--custom-*`` options, or None."""
    if args.custom_scale is None and args.custom_mean is None and args.custom_std is None:
        return None
    return custom_preset(args.custom_scale, args.custom_mean, args.custom_std)


def run(args) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise NormalizationRefused(f"--batch-size must be 1 or more, not {args.batch_size}.")
    custom = custom_from_args(args)
    progress = reporter_for(args)
    loaded, source, images = load_inputs(args.model, args.images, progress)
    teachable = loaded.teachable_machine or args.inference_preset == "teachable"
    report = analyze(loaded, images, source=source, custom=custom,
                     presets=applicable_presets(loaded.channels, teachable=teachable),
                     variants=not (args.json or args.no_variants), batch_size=args.batch_size, progress=progress)
    progress.close()
    findings = normalization_findings(report, args.inference_preset)
    if args.json:
        for note in (report.accuracy_note, report.fingerprint.reason, getattr(report, "inconclusive", None)):
            if note:
                print(f"note: {note}", file=sys.stderr)
        print(json.dumps({**report.to_json(), "inference_preset": args.inference_preset,
                          "findings": findings_json(findings)}))
        return exit_status(findings)
    _print_text(report, loaded, images, findings)
    return exit_status(findings)


def _pct(v) -> str:
    return "   -  " if v is None or v != v else f"{v:6.1%}"


def _print_text(report, loaded, images, findings) -> None:
    print(f"Model: {loaded.name}   input {loaded.input_shape}   images: {len(images)} in "
          f"{len(images.class_names)} classes")
    if report.builtin_preprocessing:
        print("Built-in preprocessing: " + "; ".join(report.builtin_preprocessing))
        if report.expects_raw_pixels:
            print("  -> the model normalizes its input itself: feed it raw 0-255 pixels (preset `raw`).")
    print()
    fp = report.fingerprint
    w = max([12] + [len(str(x)) for x in report.results["setting"]])
    if fp.ranking is not None:
        print(f"Label-free fingerprint (first BatchNormalization layer '{fp.layer}', {fp.n_images} images; "
              "lower distance = closer to the training statistics):")
        for r in fp.ranking.itertuples():
            print(f"  {r.rank}. {r.preset:<{w}} distance {r.distance:12.4g}")
    else:
        print(f"Label-free fingerprint: none. {fp.reason}")
    print()
    if not report.accuracy_available:
        print(f"Accuracy hidden: {report.accuracy_note}")
    header = f"{'rank':>4}  {'setting':<{w}} {'accuracy':>8} {'mean conf':>9} {'agreement':>9} {'n':>6}"
    print(header)
    for r in report.results.itertuples():
        print(f"{r.rank:>4}  {r.setting:<{w}} {_pct(r.accuracy):>8} {_pct(r.mean_confidence):>9} "
              f"{_pct(r.agreement):>9} {r.n:>6}")
    print()
    print(report.agreement_note)
    inconclusive = getattr(report, "inconclusive", None)
    if inconclusive:
        print(f"\nNO BEST SETTING: {inconclusive}")
    elif report.best_setting is not None:
        print(f"\nBest setting: {report.best_setting.label} (by {report.best_by}). Prepare one image like this:\n")
        print(report.snippet())
    for f in findings:
        print(f"\n{f.severity.upper()}: {f.title}.\n{f.fix}")
