"""Stored analysis results as data: one JSON file and one ``.npz`` of arrays, never a pickle.

A result (a `NormalizationReport`, a `DiagnosisReport`, a `RepairResult`, a `GradcamReport`)
is written as two files side by side:

- ``<name>.npz`` — every numpy array (and ``bytes``, as ``uint8``) of the result, under keys
  ``a0``, ``a1``, ...; read with ``allow_pickle=False``, so an object array is never stored there;
- ``<name>.json`` — ``{"format": "tlviz-result", "version": 1, "npz_sha256": ..., "data": ...}``,
  where ``data`` is the result in plain JSON with tagged objects (a dict whose one ``$`` key says
  what it is):

  ========================================= ==================================================
  ``{"$obj": "Finding", "fields": {...}}``  an instance of a known result type (its attributes)
  ``{"$array": "a3"}``                      a numpy array held in the ``.npz``
  ``{"$objarray": [...], "shape": [...]}``  a numpy array of Python objects, item by item
  ``{"$bytes": "a4"}``                      bytes (a repaired model's ``.keras``)
  ``{"$scalar": "<f4", "v": 0.5}``          a numpy scalar
  ``{"$tuple": [...]}`` / ``{"$set": [...]}`` tuples and sets
  ``{"$dict": [[k, v], ...]}``              a dict whose keys are not all plain strings
  ``{"$counter": [[k, v], ...]}``           a `collections.Counter`
  ``{"$dataframe": {...}}``                 a pandas DataFrame: columns, index, one entry per column
  ``{"$path": "..."}``                      a `pathlib.Path`
  ========================================= ==================================================

Decoding builds instances only of the classes in `result_types` (an explicit list of the
known result types, by name); it never imports a class named in the file. A file that does
not parse, does not match its ``.npz``, or names anything else raises `ValueError`; the
job system then treats the result as absent and computes it again (`tlviz.jobs.results`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

FORMAT = "tlviz-result"
VERSION = 1


def result_types() -> dict[str, type]:
    """The classes a stored result may hold, by name: the only classes decoding builds."""
    from tlviz.diagnose.context import PresetEvidence
    from tlviz.diagnose.report import DiagnosisReport, SkippedCheck
    from tlviz.findings import Finding
    from tlviz.gradcam import GradcamMap, GradcamReport
    from tlviz.normalize.results import Evaluation, Fingerprint, LabelMatch, NormalizationReport, Setting
    from tlviz.presets import CustomPreset
    from tlviz.repair.result import RepairResult, RepairStep

    classes = (NormalizationReport, Evaluation, Setting, Fingerprint, LabelMatch, CustomPreset, DiagnosisReport,
               SkippedCheck, PresetEvidence, Finding, RepairResult, RepairStep, GradcamReport, GradcamMap)
    return {c.__name__: c for c in classes}


# -- encoding -------------------------------------------------------------------------------

class _Encoder:
    def __init__(self, types: dict[str, type]):
        self.names = {cls: name for name, cls in types.items()}
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray) -> str:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = a
        return key

    def encode(self, obj):
        if obj is None or type(obj) in (bool, int, float, str):
            return obj
        if isinstance(obj, str):  # a numpy string scalar, or another str subclass: stored as text
            return str(obj)
        if isinstance(obj, np.generic):
            if isinstance(obj, (np.str_, np.bytes_)) or obj.dtype.kind not in "biufc":
                raise ValueError(f"cannot store a numpy scalar of dtype {obj.dtype}")
            return {"$scalar": obj.dtype.str, "v": obj.item() if obj.dtype.kind != "c" else [obj.real, obj.imag]}
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind == "O":
                return {"$objarray": [self.encode(x) for x in obj.ravel().tolist()], "shape": list(obj.shape)}
            if obj.dtype.kind not in "biufcUSmM":
                raise ValueError(f"cannot store a numpy array of dtype {obj.dtype}")
            return {"$array": self.array(obj)}
        if isinstance(obj, (bytes, bytearray)):
            return {"$bytes": self.array(np.frombuffer(bytes(obj), dtype=np.uint8))}
        if isinstance(obj, tuple) and type(obj) is tuple:
            return {"$tuple": [self.encode(x) for x in obj]}
        if isinstance(obj, list):
            return [self.encode(x) for x in obj]
        if isinstance(obj, (set, frozenset)):
            return {"$set": [self.encode(x) for x in obj]}
        if isinstance(obj, collections.Counter):
            return {"$counter": [[self.encode(k), self.encode(v)] for k, v in obj.items()]}
        if isinstance(obj, dict):
            if all(type(k) is str and not k.startswith("$") for k in obj):
                return {k: self.encode(v) for k, v in obj.items()}
            return {"$dict": [[self.encode(k), self.encode(v)] for k, v in obj.items()]}
        if isinstance(obj, pd.DataFrame):
            return {"$dataframe": self.frame(obj)}
        if isinstance(obj, Path):
            return {"$path": str(obj)}
        name = self.names.get(type(obj))
        if name is not None and dataclasses.is_dataclass(obj):
            return {"$obj": name, "fields": {k: self.encode(v) for k, v in vars(obj).items()}}
        raise ValueError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} in a result file "
                              "(add its class to tlviz.jobs.resultfiles.result_types if it is a result type)")

    def column(self, s: pd.Series) -> dict:
        if isinstance(s.dtype, pd.CategoricalDtype):
            return {"categories": self.encode(s.cat.categories.to_numpy()), "codes": self.encode(s.cat.codes.to_numpy()),
                    "ordered": bool(s.cat.ordered)}
        if isinstance(s.dtype, np.dtype) and s.dtype.kind in "biufcmM":
            return {"values": self.encode(s.to_numpy())}
        return {"objects": [self.encode(x) for x in s.tolist()], "dtype": str(s.dtype)}

    def index(self, index: pd.Index) -> dict:
        if isinstance(index, pd.MultiIndex):
            raise ValueError("cannot store a DataFrame with a MultiIndex")
        name = self.encode(index.name)
        if isinstance(index, pd.RangeIndex):
            return {"range": [index.start, index.stop, index.step], "name": name}
        return {"values": self.column(index.to_series(index=None)), "name": name}

    def frame(self, df: pd.DataFrame) -> dict:
        return {"columns": self.index(df.columns), "index": self.index(df.index),
                "data": [self.column(df.iloc[:, i]) for i in range(df.shape[1])], "attrs": self.encode(dict(df.attrs))}


# -- decoding -------------------------------------------------------------------------------

class _Decoder:
    def __init__(self, types: dict[str, type], arrays):
        self.types = types
        self.arrays = arrays

    def array(self, key) -> np.ndarray:
        if not isinstance(key, str) or key not in self.arrays:
            raise ValueError(f"the .npz holds no array {key!r}")
        return self.arrays[key]

    def decode(self, obj):
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, list):
            return [self.decode(x) for x in obj]
        if not isinstance(obj, dict):
            raise ValueError(f"unexpected JSON value {type(obj).__name__}")
        tags = [k for k in obj if k.startswith("$")]
        if not tags:
            return {k: self.decode(v) for k, v in obj.items()}
        tag = tags[0]
        value = obj[tag]
        if tag == "$array":
            return self.array(value)
        if tag == "$bytes":
            return self.array(value).tobytes()
        if tag == "$objarray":
            items = [self.decode(x) for x in value]
            out = np.empty(len(items), dtype=object)
            out[:] = items
            return out.reshape(tuple(obj.get("shape") or (len(items),)))
        if tag == "$scalar":
            v = obj.get("v")
            return np.dtype(value).type(complex(*v) if isinstance(v, list) else v)
        if tag == "$tuple":
            return tuple(self.decode(x) for x in value)
        if tag == "$set":
            return {self.decode(x) for x in value}
        if tag == "$counter":
            return collections.Counter({self.decode(k): self.decode(v) for k, v in value})
        if tag == "$dict":
            return {self.decode(k): self.decode(v) for k, v in value}
        if tag == "$path":
            return Path(value)
        if tag == "$dataframe":
            return self.frame(value)
        if tag == "$obj":
            cls = self.types.get(value)
            if cls is None:
                raise ValueError(f"the file names {value!r}, which is not a known result type")
            inst = cls.__new__(cls)
            for k, v in (obj.get("fields") or {}).items():
                object.__setattr__(inst, k, self.decode(v))
            return inst
        raise ValueError(f"unknown tag {tag!r}")

    def column(self, spec: dict) -> pd.Series:
        if "categories" in spec:
            cats = self.decode(spec["categories"])
            return pd.Series(pd.Categorical.from_codes(self.decode(spec["codes"]), categories=cats,
                                                       ordered=bool(spec.get("ordered"))))
        if "values" in spec:
            return pd.Series(self.decode(spec["values"]))
        values = [self.decode(x) for x in spec["objects"]]
        dtype = spec.get("dtype") or "object"
        try:
            return pd.Series(values, dtype=dtype)
        except (TypeError, ValueError):
            return pd.Series(values, dtype=object)

    def index(self, spec: dict) -> pd.Index:
        name = self.decode(spec.get("name"))
        if "range" in spec:
            start, stop, step = spec["range"]
            return pd.RangeIndex(start, stop, step, name=name)
        return pd.Index(self.column(spec["values"]), name=name)

    def frame(self, spec: dict) -> pd.DataFrame:
        index = self.index(spec["index"])
        columns = self.index(spec["columns"])
        data = [self.column(c) for c in spec["data"]]
        df = pd.DataFrame({i: s.set_axis(index) if len(s) == len(index) else s for i, s in enumerate(data)},
                          index=index)
        if len(data) != len(columns):
            raise ValueError("a stored DataFrame's columns do not match its data")
        df.columns = columns
        df.attrs.update(self.decode(spec.get("attrs")) or {})
        return df


# -- files ------------------------------------------------------------------------------------

def _paths(stem: Path) -> tuple[Path, Path]:
    stem = Path(stem)
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")


def write_result(stem, obj) -> tuple[Path, Path]:
    """Write `obj` as ``<stem>.npz`` then ``<stem>.json`` (each atomically; the JSON names the ``.npz``'s hash).

    Args:
        stem: the path without suffix (e.g. ``<job folder>/result``).
        obj: a result (see the module docstring for what it may hold).

    Returns:
        The paths of the JSON and the ``.npz`` file.

    Raises:
        ValueError: `obj` holds something that cannot be stored as data.
    """
    json_path, npz_path = _paths(stem)
    enc = _Encoder(result_types())
    data = enc.encode(obj)
    buf = io.BytesIO()
    np.savez(buf, **enc.arrays)
    raw = buf.getvalue()
    tmp = npz_path.with_name(f".{npz_path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, npz_path)
    text = json.dumps({"format": FORMAT, "version": VERSION, "npz_sha256": hashlib.sha256(raw).hexdigest(),
                       "data": data})
    tmp = json_path.with_name(f".{json_path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, json_path)
    return json_path, npz_path


def read_header(stem) -> dict:
    """The JSON part of a stored result, checked for its format (the arrays are not read).

    Raises:
        ValueError: missing, not JSON, or not a tlviz result file.
    """
    json_path, npz_path = _paths(stem)
    try:
        head = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{json_path.name} cannot be read ({type(exc).__name__})") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("version") != VERSION \
            or "data" not in head or not npz_path.is_file():
        raise ValueError(f"{json_path.name} is not a complete tlviz result file")
    return head


def read_result(stem):
    """The result stored at `stem` by `write_result`.

    Raises:
        ValueError: the files are missing, damaged, do not belong together, or name an unknown type.
    """
    head = read_header(stem)
    _, npz_path = _paths(stem)
    try:
        raw = npz_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != head.get("npz_sha256"):
            raise ValueError(f"{npz_path.name} does not belong to its JSON file")
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return _Decoder(result_types(), arrays).decode(head["data"])
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild it means it is not trusted
        raise ValueError(f"{npz_path.stem} cannot be decoded ({type(exc).__name__}: {exc})") from None


def remove_result(stem) -> None:
    """Delete both files of a stored result (missing ones are fine)."""
    for p in _paths(stem):
        p.unlink(missing_ok=True)


def result_files(stem) -> tuple[Path, Path]:
    """The two paths of a stored result: ``(<stem>.json, <stem>.npz)``."""
    return _paths(stem)
