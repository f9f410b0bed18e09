"""``python -m tlviz layers MODEL [--json]``: the freezing-status table."""

from __future__ import annotations

import json

from tlviz.layers import freezing_findings, layer_table, totals
from tlviz.models import load_model

HELP = "print every layer (nested models included) with its effective trainability"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a .keras or .h5 model file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args) -> int:
    loaded = load_model(args.model)
    table = layer_table(loaded.model)
    tot = totals(table)
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
                {"path": r.path, "class": r["class"], "trainable": bool(r.trainable),
                 "trainable_params": int(r.trainable_params), "non_trainable_params": int(r.non_trainable_params)}
                for _, r in table.iterrows()
            ],
        }))
        return 0
    print(f"Model: {loaded.name}   input {loaded.input_shape}   outputs {loaded.n_outputs}")
    print(loaded.origin + (f". {loaded.conversion['summary']}" if loaded.conversion else "."))
    cols = ["path", "class", "output_shape", "trainable_params", "non_trainable_params", "trainable", "role"]
    print(table[cols].to_string(index=False))
    print(f"\nTotal params: {tot['total_params']:,}   trainable: {tot['trainable_params']:,}   "
          f"non-trainable: {tot['non_trainable_params']:,}")
    for f in freezing_findings(loaded.model, table):
        print(f"{f.severity.upper()}: {f.title}. {f.fix}")
    return 0
