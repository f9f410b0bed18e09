"""The job system's registry of kinds, and stored results as data (`tlviz.jobs.resultfiles`): JSON + ``.npz``.

Each result kind (normalize, diagnose, repair, gradcam) is computed once on the small digits sample,
written, read back and compared field by field with the original; a damaged result is never trusted.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tlviz import jobs
from tlviz.errors import TlvizError
from tlviz.jobs import resultfiles
from tlviz.jobs.results import has_result, result_stem, stored_result

ROOT = Path(__file__).resolve().parent.parent


def _same(a, b, path="result"):
    """Deep equality of two results: dataclasses by their attributes, arrays and frames by value and dtype."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        if a.dtype.kind == "O":
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel())):
                _same(x, y, f"{path}[{i}]")
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=path)
    elif dataclasses.is_dataclass(a):
        assert vars(a).keys() == vars(b).keys(), path
        for k in vars(a):
            _same(getattr(a, k), getattr(b, k), f"{path}.{k}")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _round_trip(obj, tmp_path):
    json_path, npz_path = resultfiles.write_result(tmp_path / "result", obj)
    assert json.loads(json_path.read_text())["format"] == "tlviz-result"
    with np.load(npz_path, allow_pickle=False):  # no object arrays: readable without pickle
        pass
    back = resultfiles.read_result(tmp_path / "result")
    _same(obj, back)
    return back


# -- the registry of kinds -------------------------------------------------------------------

def test_every_kind_is_registered_with_its_work():
    assert set(jobs.KINDS) == {"normalize", "diagnose", "repair", "gradcam", "runs", "lrfind"}
    assert set(jobs.ANALYSIS_KINDS) == {"normalize", "diagnose", "repair", "gradcam"}
    assert set(jobs.RUN_KINDS) == {"runs", "lrfind"}
    for name, kind in jobs.KINDS.items():
        assert kind.name == name and kind.title
        if kind.is_analysis:
            assert kind.params is not None and kind.compute is not None and not kind.cooperative_cancel
        else:
            assert kind.run is not None and kind.ray_run is not None and kind.cooperative_cancel
    assert jobs.get_kind("runs") is jobs.KINDS["runs"]


@pytest.mark.parametrize("name", ["train", "", None, "Normalize"])
def test_an_unknown_kind_is_refused_with_the_kinds_that_exist(name):
    with pytest.raises(TlvizError, match=r"Unknown job kind .*Use one of: normalize, diagnose, repair, gradcam, "
                                         r"runs, lrfind .*tlviz.jobs.registry.KINDS"):
        jobs.get_kind(name)


def test_a_job_folder_of_an_unknown_kind_polls_as_failed(runs):
    from tlviz.jobs.folder import new_job

    job_id, _ = new_job("train", {}, queued=False)
    st = jobs.poll(job_id)
    assert st.state == "failed" and not st.active and "missing or damaged" in st.message


# -- results as data ------------------------------------------------------------------------------

def test_no_pickle_anywhere_in_the_engine():
    """Nothing in tlviz/ pickles or unpickles: no pickle-family import, no ``allow_pickle=True``, no
    ``read_pickle`` / ``to_pickle`` (the words may still appear in messages refusing a user's pickle)."""
    banned = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
    found = []
    for path in sorted((ROOT / "tlviz").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            elif isinstance(node, ast.Attribute) and node.attr in ("read_pickle", "to_pickle"):
                names = [node.attr]
            elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    names = ["allow_pickle"]
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                      if n in banned or n in ("read_pickle", "to_pickle", "allow_pickle")]
    assert not found, f"pickle in tlviz/: {found}"


def test_plain_values_round_trip(tmp_path):
    from tlviz.findings import Finding

    frame = pd.DataFrame({"setting": ["tf", "unit"], "accuracy": [0.5, np.nan], "n": np.array([3, 4], np.int32),
                          "ok": [True, False], "what": pd.Categorical(["a", "b"]), "mixed": [None, (1, "x")]},
                         index=pd.Index(["r1", "r2"], name="row"))
    obj = {"tuple": (1, 2.5, "x"), "set": {1, 2}, "ints": {1: "one", 2: "two"}, "counter": Counter(a=2),
           "bytes": b"PK\x03\x04", "scalar": np.float32(0.25), "i64": np.int64(7), "text": np.str_("abc"),
           "arr": np.arange(6, dtype=np.float16).reshape(2, 3), "strs": np.array(["a", "bc"]),
           "objarr": np.array([None, "x", 3], dtype=object), "frame": frame, "empty": pd.DataFrame(),
           "$dollar": 1, "finding": Finding("x", "info", "inference", "t", {"k": [1, 2]}, "fix"),
           "nan": float("nan"), "inf": float("inf")}
    back = resultfiles.read_result(resultfiles.write_result(tmp_path / "r", obj)[0].with_suffix(""))
    back["text"] = np.str_(back["text"])  # numpy strings come back as plain str
    _same(obj, back)


def test_an_unknown_class_is_neither_written_nor_built(tmp_path):
    class Mine:
        pass

    with pytest.raises(ValueError, match="cannot store a .*Mine"):
        resultfiles.write_result(tmp_path / "r", {"x": Mine()})
    # A file naming a class outside the whitelist (even an importable one) is refused, never imported.
    resultfiles.write_result(tmp_path / "r", {"x": 1})
    head = json.loads((tmp_path / "r.json").read_text())
    head["data"] = {"$obj": "subprocess.Popen", "fields": {}}
    (tmp_path / "r.json").write_text(json.dumps(head))
    with pytest.raises(ValueError, match="not a known result type"):
        resultfiles.read_result(tmp_path / "r")


@pytest.fixture(scope="module")
def digits(loaded_base, digits_0_4):
    from tlviz.imagesets import open_source

    source = open_source(digits_0_4)
    return loaded_base, source.load(loaded_base.image_size, loaded_base.channels), source


def test_a_normalization_report_round_trips(digits, tmp_path):
    from tlviz import normalize

    loaded, images, source = digits
    report = normalize.analyze(loaded, images, source=source)
    back = _round_trip(report, tmp_path)
    assert back.best_preset == report.best_preset and back.best_setting == report.best_setting


def test_a_diagnosis_report_round_trips_and_judges_another_preset_alike(digits, tmp_path):
    from tlviz import diagnose

    loaded, images, source = digits
    report = diagnose.diagnose(loaded, images, "unit", source=source)
    back = _round_trip(report, tmp_path)
    assert [f.id for f in back.for_preset("tf").findings] == [f.id for f in report.for_preset("tf").findings]
    assert back.normalization is not None and back.by_area() == report.by_area()


def test_a_repair_result_round_trips(digits, tmp_path):
    from tlviz.repair import repair

    loaded, images, _ = digits
    result = repair(loaded, images, ["normalization-mismatch"], "unit")
    back = _round_trip(result, tmp_path)
    assert back.model_bytes == result.model_bytes and back.model_bytes[:2] == b"PK"


def test_a_gradcam_report_round_trips(digits, tmp_path):
    from tlviz import gradcam

    loaded, images, _ = digits
    _round_trip(gradcam.explain(loaded, images, [(0, "tf"), (3, "unit")]), tmp_path)


@pytest.mark.parametrize("damage", ["json", "npz", "swap", "truncate"])
def test_a_damaged_stored_result_is_absent_and_is_computed_again(digits, runs, damage):
    loaded, images, _ = digits
    params = {"items": [[0, "tf"]]}
    first = jobs.start_analysis("gradcam", loaded, images, params)
    assert jobs.wait(first, timeout=300).state == "done"
    key = jobs.poll(first).key
    stem = result_stem("gradcam", key)
    json_path, npz_path = resultfiles.result_files(stem)
    if damage == "json":
        json_path.write_text("{not json")
    elif damage == "npz":
        npz_path.write_bytes(b"garbage")
    elif damage == "swap":  # a .npz that is not the one its JSON was written with
        resultfiles.write_result(runs / "other", {"a": np.zeros(3)})
        npz_path.write_bytes((runs / "other.npz").read_bytes())
    else:
        npz_path.write_bytes(npz_path.read_bytes()[:40])
    assert stored_result("gradcam", key) is None  # never trusted; its files are removed
    assert not has_result("gradcam", key) and not json_path.exists()
    if damage == "json":  # a damaged file is not served from the store either: a worker computes it again
        json_path.write_text("{not json")
    again = jobs.start_analysis("gradcam", loaded, images, params)
    st = jobs.wait(again, timeout=300)
    assert again != first and st.state == "done" and not st.from_store, st.message
    assert jobs.load_result(again).maps and has_result("gradcam", key)
