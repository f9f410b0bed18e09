"""``python -m tlviz layers MODEL [--json]``: the freezing-status table and the freezing findings.

Exit status: 1 when a freezing finding is an error (e.g. ``no-trainable-weights``: nothing can learn),
else 0; 2 for a model that cannot be loaded.
"""

from __future__ import annotations

import json

from tlviz.commands import exit_status, findings_json, print_findings
from tlviz.layers import freezing_findings, layer_table, totals
from tlviz.models import load_model

HELP = "print every layer (nested models included) with its effective trainability and role; exit 1 on an error"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a .keras or .h5 model file")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {..., "layers": [{path, class, role, trainable, ...}], '
                             '"findings": [...]}')


def run(args) -> int:
    loaded = load_model(args.model)
    table = layer_table(loaded.model)
    tot = totals(table)
    findings = freezing_findings(loaded.model, table)
    if args.json:
        print(json.dumps({
            "model": loaded.name,
            "input_shape": [d if d is None else int(d) for d in loaded.input_shape],
            "origin": loaded.origin,
            "teachable_machine": loaded.teachable_machine,
            "class_names": loaded.class_names,
            "converted_from": loaded.conversion,
            **tot,
            "layers": [
                {"path": r.path, "class": r["class"], "role": r.role, "trainable": bool(r.trainable),
                 "trainable_params": int(r.trainable_params), "non_trainable_params": int(r.non_trainable_params)}
                for _, r in table.iterrows()
            ],
            "findings": findings_json(findings),
        }))
        return exit_status(findings)
    print(f"Model: {loaded.name}   input {loaded.input_shape}   outputs {loaded.n_outputs}")
    print(loaded.origin + (f". {loaded.conversion['summary']}" if loaded.conversion else "."))
    cols = ["path", "class", "output_shape", "trainable_params", "non_trainable_params", "trainable", "role"]
    print(table[cols].to_string(index=False))
    print(f"\nTotal params: {tot['total_params']:,}   trainable: {tot['trainable_params']:,}   "
          f"non-trainable: {tot['non_trainable_params']:,}")
    print_findings(findings)
    return exit_status(findings)
