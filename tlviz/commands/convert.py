"""``python -m tlviz convert MODEL OUT.keras [--json]``: save a loadable model as a Keras 3 `.keras` file.

Meant for Keras 2 `.h5` files and Teachable Machine export zips: the architecture is translated as
data (`tlviz.models.legacy`), the weights copied layer by layer, and the result saved with tlviz's
metadata (class names from labels.txt, what was converted) embedded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tlviz.errors import ModelRefused
from tlviz.models import keras_bytes, load_model

HELP = "save a Keras 2 .h5 or a Teachable Machine export .zip as a Keras 3 .keras file"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a .keras / .h5 model file, or a Teachable Machine Keras export .zip")
    parser.add_argument("out", help="where to write the .keras file")
    parser.add_argument("--json", action="store_true", help="print one JSON object describing the result")


def run(args) -> int:
    out = Path(args.out)
    if out.suffix != ".keras":
        raise ModelRefused(f"The output must be a `.keras` file, not '{out.name}'. Give a name ending in .keras.")
    if out.exists() and out.is_dir():
        raise ModelRefused(f"{out} is a folder. Give the path of the .keras file to write.")
    args.progress(0.0, "Loading the model…")
    loaded = load_model(args.model)
    args.progress(0.5, "Saving as .keras…")
    data = keras_bytes(loaded)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    result = {"model": loaded.name, "out": str(out), "bytes": len(data), "origin": loaded.origin,
              "teachable_machine": loaded.teachable_machine, "class_names": loaded.class_names,
              "converted_from": loaded.conversion}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{loaded.origin}: {loaded.name} -> {out} ({len(data) / 2**20:.1f} MB)")
        if loaded.conversion:
            print(loaded.conversion["summary"])
    return 0
