"""Hostile and broken model uploads (issue 6).

Every file here is refused by `tlviz.models.load_model` with a message that says
what was wrong; nothing stored in the file runs; and in the app the model that
was loaded before stays loaded.

Payloads that can carry code write a marker file (under the test's tmp folder)
when their code runs. A *control* opens each such payload the unsafe way
(``safe_mode=False``, ``pickle.loads``, ``tf.saved_model.load``) and sees the
marker appear, which proves the payload is live and the real check could fail;
the marker is then deleted and `load_model` must refuse the file without the
marker coming back.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tlviz.errors import ModelRefused
from tlviz.models import load_model

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "digits_base.keras"

#: Keras 3 imports `<module>` named by a config when its package is one of
#: keras / keras_hub / keras_cv / keras_nlp. A stand-in `keras_hub` package whose
#: import writes the marker shows that Keras's own safe_mode does not stop a
#: module reference; tlviz's check must.
STANDIN_PACKAGE = "keras_hub"
STANDIN_MODULE = "keras_hub.tlviz_probe"
#: A custom class registered in this process under a "package>Name" name. Keras's
#: safe_mode rebuilds registered classes, so a config naming it runs its code.
REGISTERED = "tlvizprobe>Probe"


@dataclass
class Payload:
    path: Path
    upload_name: str
    match: str  # regex the refusal message must match
    marker: Path | None = None  # file the payload writes when its code runs
    max_mb: str | None = None  # TLVIZ_MAX_MODEL_MB to set while loading


# -- building the payloads -------------------------------------------------------

def _touching_lambda(marker: Path):
    """A function that writes `marker` when called (closure, so Keras can serialize it)."""
    p = str(marker)
    return lambda t: (__import__("pathlib").Path(p).touch(), t)[1]


class _PickleBomb:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _lambda_models(marker: Path):
    """A model with a Lambda at top level, and one with a Lambda inside a nested Sequential base."""
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(_touching_lambda(marker), name="evil")(inp)
    top = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x)), name="top")
    base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Lambda(_touching_lambda(marker), name="evil"),
                             keras.layers.Conv2D(2, 3)], name="base")
    inp = keras.Input((8, 8, 3))
    nested = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(base(inp))), name="nested")
    return top, nested


def _tiny_archive(folder: Path) -> tuple[dict, dict]:
    """config.json and the other entries of a small legit `.keras`: Input -> Flatten 'flat' -> Dense 'out',
    plus a nested variant whose Dense 'dense' sits inside a Sequential 'base'."""
    import keras

    inp = keras.Input((8, 8, 3))
    tiny = keras.Model(inp, keras.layers.Dense(2, name="out")(keras.layers.Flatten(name="flat")(inp)), name="tiny")
    path = folder / "tiny.keras"
    tiny.save(path)
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    return json.loads(entries.pop("config.json")), entries


def _write_archive(path: Path, config, entries: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _layer(config: dict, name: str) -> dict:
    return next(l for l in config["config"]["layers"] if l["config"].get("name") == name)


def _replace_flat(config: dict, obj: dict) -> dict:
    """Put `obj` in place of the Flatten layer 'flat', keeping its graph wiring."""
    layers = config["config"]["layers"]
    i = next(i for i, l in enumerate(layers) if l["config"].get("name") == "flat")
    old = layers[i]
    layers[i] = {**obj, "name": "flat", "inbound_nodes": old["inbound_nodes"],
                 "build_config": old.get("build_config")}
    return config


def _saved_model(folder: Path, marker: Path) -> None:
    """A real SavedModel whose `touch` function writes `marker` (a graph op, no Python)."""
    import tensorflow as tf

    class Touch(tf.Module):
        @tf.function(input_signature=[])
        def touch(self):
            tf.io.write_file(str(marker), "ran")
            return tf.constant(1)

    tf.saved_model.save(Touch(), str(folder))


def _zip_folder(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{folder.name}/{f.relative_to(folder)}")
    return path


def _standin_package(root: Path, marker: Path) -> None:
    pkg = root / STANDIN_PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tlviz_probe.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\nclass Probe:\n    pass\n")


def _forget_standin() -> None:
    for name in [n for n in sys.modules if n == STANDIN_PACKAGE or n.startswith(STANDIN_PACKAGE + ".")]:
        del sys.modules[name]


def _probe_class():
    import keras

    class Probe(keras.layers.Layer):
        def __init__(self, marker=None, **kwargs):
            super().__init__(**kwargs)
            self.marker = marker

        @classmethod
        def from_config(cls, config):
            Path(config["marker"]).touch()  # the "payload": runs as soon as Keras rebuilds the layer
            return cls(**config)

        def call(self, x):
            return keras.ops.reshape(x, (-1, 8 * 8 * 3))

    return Probe


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Every hostile / broken file, built once. Also puts the stand-in package on sys.path and
    registers the custom class for the module's duration, so those payloads are live here."""
    import keras

    root = tmp_path_factory.mktemp("hostile")
    marks = root / "markers"
    marks.mkdir()
    out: dict[str, Payload] = {}

    def mark(name):
        return marks / name

    # Lambda layers (.keras and legacy .h5; top level and nested). The Lambda runs when the model
    # is built, so the marker is removed after building and before the check.
    for kind in ("top", "nested"):
        m = mark(f"lambda_{kind}")
        top, nested = _lambda_models(m)
        model = top if kind == "top" else nested
        where = r"Lambda layer \('evil'\)" + (" inside 'base'" if kind == "nested" else "")
        for fmt in ("keras", "h5"):
            path = root / f"lambda_{kind}.{fmt}"
            model.save(path)
            out[f"lambda_{kind}_{fmt}"] = Payload(path, path.name, where, m)
        m.unlink(missing_ok=True)

    # Hand-crafted config.json files.
    config, entries = _tiny_archive(root)

    def craft(name, mutate, match, marker=None):
        cfg = json.loads(json.dumps(config))
        cfg = mutate(cfg) or cfg
        path = _write_archive(root / f"{name}.keras", cfg, entries)
        out[name] = Payload(path, path.name, match, marker)

    from keras.src.utils.python_utils import func_dump

    m = mark("lambda_activation")
    code = func_dump(_touching_lambda(m))

    def lambda_activation(cfg):
        _layer(cfg, "out")["config"]["activation"] = {"class_name": "__lambda__", "config": {"value": list(code)}}
    craft("lambda_activation", lambda_activation,
          r"Python code \(a serialized lambda\) in field 'activation' of layer 'out'", m)

    os_system = {"module": "os", "class_name": "function", "config": "system", "registered_name": "system"}

    def os_activation(cfg):
        _layer(cfg, "out")["config"]["activation"] = dict(os_system)
    craft("os_system_activation", os_activation,
          r"custom function 'system' from module 'os' in field 'activation' of layer 'out'")
    def builtins_eval(cfg):
        _layer(cfg, "out")["config"]["activation"] = {
            "module": "builtins", "class_name": "function", "config": "eval", "registered_name": "function"}
    craft("builtins_function", builtins_eval,
          r"function 'eval' from module 'builtins' in field 'activation' of layer 'out'.*not a Keras activation")
    craft("os_system_toplevel", lambda cfg: dict(os_system), r"custom function 'system' from module 'os'")
    craft("builtins_layer", lambda cfg: _replace_flat(cfg, {
        "module": "builtins", "class_name": "eval", "config": {"name": "flat"}, "registered_name": None}),
        r"custom layer 'flat' of class 'eval' from module 'builtins'")
    m = mark("subprocess_layer")
    craft("subprocess_layer", lambda cfg: _replace_flat(cfg, {
        "module": "subprocess", "class_name": "Popen", "registered_name": None,
        "config": {"name": "flat", "args": ["touch", str(m)]}}),
        r"custom layer 'flat' of class 'Popen' from module 'subprocess'", m)
    craft("kerasevil_module", lambda cfg: _replace_flat(cfg, {
        "module": "kerasevil.layers", "class_name": "Flatten", "config": {"name": "flat"}, "registered_name": None}),
        r"custom layer 'flat' of class 'Flatten' from module 'kerasevil.layers'")
    craft("lambda_class", lambda cfg: _replace_flat(cfg, {
        "class_name": "__lambda__", "config": {"value": list(code)}}),
        r"Python code \(a serialized lambda\) in layer 'flat'")
    craft("tfsm_layer", lambda cfg: _replace_flat(cfg, {
        "module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None,
        "config": {"name": "flat", "filepath": str(root / "somewhere")}}),
        r"TFSMLayer layer \('flat'\).*SavedModel program")

    def keras_get_file(cfg):
        _layer(cfg, "out")["config"]["activation"] = {
            "module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": "get_file"}
    craft("keras_utils_function", keras_get_file,
          r"function 'get_file' from module 'keras.utils' in field 'activation'.*not an activation, loss")

    def nested_os(cfg):
        # the whole tiny model becomes a layer 'base' inside an outer model
        inner = json.loads(json.dumps(cfg))
        inner["config"]["name"] = "base"
        _layer(inner, "out")["config"]["activation"] = dict(os_system)
        outer = json.loads(json.dumps(cfg))
        inp = outer["config"]["layers"][0]
        outer["config"]["layers"] = [inp, {**inner, "name": "base", "inbound_nodes": _layer(cfg, "flat")["inbound_nodes"]}]
        return outer
    craft("os_system_nested", nested_os, r"from module 'os' in field 'activation' of layer 'base/out'")

    # Live even under Keras's own safe_mode: a module of a package Keras imports from, and a
    # registered custom class.
    m = mark("standin_module")
    _standin_package(root / "site", m)
    craft("standin_module", lambda cfg: _replace_flat(cfg, {
        "module": STANDIN_MODULE, "class_name": "Probe", "config": {"name": "flat"}, "registered_name": None}),
        rf"custom layer 'flat' of class 'Probe' from module '{STANDIN_MODULE}'", m)
    m = mark("registered_name")
    craft("registered_name", lambda cfg: _replace_flat(cfg, {
        "module": "keras.layers", "class_name": "Probe", "registered_name": REGISTERED,
        "config": {"name": "flat", "marker": str(m)}}),
        rf"custom layer 'flat' of class '{REGISTERED}' from module 'keras.layers'", m)

    # Not Keras files at all.
    m = mark("pickle")
    path = root / "pickle.keras"
    path.write_bytes(pickle.dumps(_PickleBomb(m), protocol=4))
    out["pickle"] = Payload(path, path.name, r"not a Keras model: it is a Python pickle", m)

    m = mark("savedmodel")
    sm = root / "exported_model"
    _saved_model(sm, m)
    out["savedmodel_folder"] = Payload(sm, sm.name, r"TensorFlow SavedModel.*model\.save\('model\.keras'\)", m)
    path = _zip_folder(sm, root / "exported_model.zip")
    out["savedmodel_zip"] = Payload(path, path.name, r"TensorFlow SavedModel.*model\.save\('model\.keras'\)", m)

    path = root / "random.keras"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    out["random"] = Payload(path, path.name, r"not a Keras model: it is neither")
    path = root / "empty.keras"
    path.write_bytes(b"")
    out["empty"] = Payload(path, path.name, r"empty \(0 bytes\)")
    data = SAMPLE.read_bytes()
    path = root / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    out["truncated"] = Payload(path, path.name, r"damaged or cut short")
    path = root / "big.keras"
    path.write_bytes(data)
    out["too_big"] = Payload(path, path.name, r"over the 0\.01 MB limit.*TLVIZ_MAX_MODEL_MB", max_mb="0.01")

    for f in marks.iterdir():
        f.unlink()

    # Make the module-reference and registered-name payloads live in this process.
    sys.path.insert(0, str(root / "site"))
    keras.saving.get_custom_objects()[REGISTERED] = _probe_class()
    try:
        yield out
    finally:
        keras.saving.get_custom_objects().pop(REGISTERED, None)
        sys.path.remove(str(root / "site"))
        _forget_standin()


# -- the unsafe controls: each payload really runs when opened carelessly -------------

def _run_unsafely(name: str, p: Payload) -> None:
    """Open `p` the way tlviz must never do; errors after the payload ran are expected."""
    import keras

    if name == "pickle":
        pickle.loads(p.path.read_bytes())
        return
    if name.startswith("savedmodel"):
        import tensorflow as tf

        tf.saved_model.load(str(p.path.parent / "exported_model")).touch()
        return
    _forget_standin()
    # standin_module and registered_name run even with Keras's default safe_mode=True.
    safe = name in ("standin_module", "registered_name")
    try:
        model = keras.saving.load_model(p.path, compile=False, safe_mode=safe)
        # A lambda activation loads silently and runs on the first prediction.
        model.predict(np.zeros((1, 8, 8, 3), "float32"), verbose=0)
    except Exception:  # noqa: BLE001, S110 - Keras may fail after the payload ran; the marker tells
        pass


#: Payloads whose code the control can make run with this Keras (3.15) / TF.
LIVE = ["lambda_top_keras", "lambda_nested_keras", "lambda_top_h5", "lambda_nested_h5", "lambda_activation",
        "standin_module", "registered_name", "pickle", "savedmodel_zip"]

#: Payloads with a marker that this Keras refuses to run even with safe_mode=False: it imports
#: nothing outside keras / keras_hub / keras_cv / keras_nlp (older Keras 3 releases did).
NOT_LIVE_HERE = ["subprocess_layer"]


@pytest.mark.parametrize("name", LIVE)
def test_payload_is_live_but_never_runs_in_load_model(hostile, name):
    p = hostile[name]
    if name == "standin_module" and _real_package_installed():
        pytest.skip(f"a real {STANDIN_PACKAGE} is installed; the stand-in cannot shadow it")
    _run_unsafely(name, p)
    assert p.marker.exists(), f"control: opening {name} unsafely should have run its code"
    p.marker.unlink()

    _forget_standin()
    with pytest.raises(ModelRefused, match=p.match):
        load_model(p.path)
    with pytest.raises(ModelRefused, match=p.match):
        load_model(p.path.read_bytes(), filename=p.upload_name)  # as an upload
    assert not p.marker.exists()
    assert STANDIN_MODULE not in sys.modules


def test_savedmodel_folder_refused_without_running(hostile):
    p = hostile["savedmodel_folder"]
    with pytest.raises(ModelRefused, match=p.match):
        load_model(p.path)
    assert not p.marker.exists()


@pytest.mark.parametrize("name", NOT_LIVE_HERE)
def test_module_reference_not_live_in_this_keras_is_still_refused(hostile, name):
    import keras

    p = hostile[name]
    # This Keras refuses to import `subprocess` even with safe_mode=False, so no control can
    # show the payload running; tlviz refuses it before Keras is asked.
    with pytest.raises((TypeError, ValueError)):
        keras.saving.load_model(p.path, compile=False, safe_mode=False)
    assert not p.marker.exists()
    with pytest.raises(ModelRefused, match=p.match):
        load_model(p.path)
    assert not p.marker.exists()


def _real_package_installed() -> bool:
    import importlib.util

    _forget_standin()
    spec = importlib.util.find_spec(STANDIN_PACKAGE)
    return spec is not None and "hostile" not in str(spec.origin)


# -- every refusal names what was wrong --------------------------------------------------

ALL = ["lambda_top_keras", "lambda_nested_keras", "lambda_top_h5", "lambda_nested_h5", "lambda_activation",
       "os_system_activation", "os_system_toplevel", "os_system_nested", "builtins_function", "builtins_layer", "subprocess_layer",
       "kerasevil_module", "lambda_class", "tfsm_layer", "keras_utils_function", "standin_module",
       "registered_name", "pickle", "savedmodel_zip", "random", "empty", "truncated", "too_big"]


@pytest.mark.parametrize("name", ALL)
def test_refusal_message_is_specific(hostile, name, monkeypatch):
    p = hostile[name]
    if p.max_mb:
        monkeypatch.setenv("TLVIZ_MAX_MODEL_MB", p.max_mb)
    with pytest.raises(ModelRefused, match=p.match) as err:
        load_model(p.path.read_bytes(), filename=p.upload_name)
    msg = str(err.value)
    assert p.upload_name in msg
    assert "safe_mode=False" not in msg
    if p.marker is not None:
        assert not p.marker.exists()


# -- archive-level guards ------------------------------------------------------------------

def _sample_entries() -> dict:
    with zipfile.ZipFile(SAMPLE) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_archive_entry_outside_the_archive_refused():
    entries = _sample_entries()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
        zf.writestr("assets/../../evil.txt", b"x")
    with pytest.raises(ModelRefused, match=r"entry 'assets/\.\./\.\./evil\.txt' points outside"):
        load_model(buf.getvalue(), filename="escape.keras")


def test_archive_symlink_entry_refused():
    entries = _sample_entries()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
        link = zipfile.ZipInfo("assets/passwd")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ModelRefused, match=r"'assets/passwd' is a symbolic link"):
        load_model(buf.getvalue(), filename="link.keras")


def test_archive_that_unpacks_far_beyond_the_limit_refused(monkeypatch):
    entries = _sample_entries()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
        zf.writestr("assets/padding.bin", b"\0" * (4 * 2**20))
    data = buf.getvalue()
    monkeypatch.setenv("TLVIZ_MAX_MODEL_MB", "1")
    assert len(data) < 2**20
    with pytest.raises(ModelRefused, match=r"unpacks to 4\.\d+ MB, more than twice the 1 MB model limit"):
        load_model(data, filename="bomb.keras")


def test_oversized_config_json_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b"{" + b" " * (33 * 2**20) + b"}")
    with pytest.raises(ModelRefused, match=r"config\.json unpacks to 33 MB"):
        load_model(buf.getvalue(), filename="huge_config.keras")


@pytest.mark.parametrize("text", ["[1, 2, 3]", '"just a string"', '{"layers": []}'])
def test_config_that_is_not_a_model_description_refused(text):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("config.json", text)
    with pytest.raises(ModelRefused, match=r"not a Keras model description|does not describe a Keras model"):
        load_model(buf.getvalue(), filename="odd.keras")


def test_malformed_names_refused():
    cfg = {"module": "keras", "class_name": "Functional", "config": {"name": "m", "layers": [
        {"module": ["os"], "class_name": "Dense", "config": {"name": "d"}}]}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("config.json", json.dumps(cfg))
    with pytest.raises(ModelRefused, match=r"'module' of an object in layer 'd' is a list"):
        load_model(buf.getvalue(), filename="odd.keras")


def test_special_files_and_damaged_h5_refused(tmp_path):
    if Path("/dev/zero").exists():
        with pytest.raises(ModelRefused, match="not a regular file"):
            load_model("/dev/zero")
    import h5py

    good = tmp_path / "w.h5"
    with h5py.File(good, "w") as f:
        f.create_dataset("x", data=np.arange(10000))
    data = good.read_bytes()
    with pytest.raises(ModelRefused, match="damaged HDF5"):
        load_model(data[: len(data) // 3], filename="cut.h5")


# -- legit models still load after the hardening ------------------------------------------

@pytest.fixture(scope="module")
def legit(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("legit")
    paths = {}
    mobile = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=4)
    for fmt in ("keras", "h5"):
        paths[f"mobilenetv2.{fmt}"] = root / f"mobilenetv2.{fmt}"
        mobile.save(paths[f"mobilenetv2.{fmt}"])

    norm = keras.layers.Normalization(name="norm")
    norm.adapt(np.random.default_rng(0).random((8, 24, 24, 3)).astype("float32"))
    base = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.BatchNormalization()], name="seqbase")
    inp = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inp)
    x = norm(x)
    x = keras.layers.Resizing(20, 20)(x)
    x = keras.layers.CenterCrop(16, 16)(x)
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    out = keras.layers.Dense(3, activation="softmax", kernel_regularizer=keras.regularizers.L2(1e-4),
                             kernel_constraint=keras.constraints.MaxNorm(2),
                             kernel_initializer=keras.initializers.HeNormal(seed=1))(keras.layers.Dropout(0.2)(x))
    pre = keras.Model(inp, out, name="preproc_nested")
    pre.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)),
                loss=keras.losses.sparse_categorical_crossentropy, metrics=["accuracy"])
    for fmt in ("keras", "h5"):
        paths[f"preproc_nested.{fmt}"] = root / f"preproc_nested.{fmt}"
        pre.save(paths[f"preproc_nested.{fmt}"])
    return paths


@pytest.mark.parametrize("name", ["mobilenetv2.keras", "mobilenetv2.h5", "preproc_nested.keras",
                                  "preproc_nested.h5"])
def test_legit_models_still_load(legit, name):
    loaded = load_model(legit[name].read_bytes(), filename=name)
    if name.startswith("mobilenetv2"):
        assert loaded.input_shape == (32, 32, 3) and loaded.n_outputs == 4
    else:
        assert loaded.input_shape == (24, 24, 3) and loaded.n_outputs == 3
        assert [d.split(" ")[0] for d in loaded.builtin_preprocessing][:2] == ["Rescaling", "Normalization"]


def test_sample_still_loads():
    for name in ("digits_base.keras", "digits_frozen.keras"):
        loaded = load_model(SAMPLE.parent / name)
        assert loaded.input_shape == (32, 32, 3) and loaded.n_outputs == 5


# -- in the app: refused, explained, previous model kept ------------------------------------

UPLOADS = ["lambda_top_keras", "lambda_nested_keras", "lambda_top_h5", "lambda_nested_h5", "lambda_activation",
           "os_system_activation", "standin_module", "registered_name", "pickle", "savedmodel_zip", "random",
           "empty", "truncated", "too_big"]


@pytest.mark.parametrize("name", UPLOADS)
def test_app_refuses_hostile_upload_and_keeps_previous_model(hostile, name, monkeypatch):
    from apptest_helpers import open_app

    p = hostile[name]
    at = open_app()
    at.radio(key="model_kind").set_value("Upload")
    at.run()
    if p.max_mb:
        monkeypatch.setenv("TLVIZ_MAX_MODEL_MB", p.max_mb)
    _forget_standin()
    at.file_uploader(key="model_upload").set_value((p.upload_name, p.path.read_bytes(), "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any(re.search(p.match, e) for e in errors), errors
    assert at.session_state["model"].name == "digits_base"
    assert "Still using the previous model" in "\n".join(c.value for c in at.caption)
    if p.marker is not None:
        assert not p.marker.exists()
    assert STANDIN_MODULE not in sys.modules


def test_model_compiled_with_a_custom_loss_still_opens(tmp_path):
    """tlviz loads with compile=False, and Keras then never reads compile_config: no need to refuse it."""
    import keras

    @keras.saving.register_keras_serializable(package="tlviztest")
    def focal_ish(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    inp = keras.Input((8, 8, 3))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    model.compile(optimizer="adam", loss=focal_ish)
    path = tmp_path / "custom_loss.keras"
    model.save(path)
    keras.saving.get_custom_objects().pop("tlviztest>focal_ish")  # as on a server that never saw the loss
    with zipfile.ZipFile(path) as zf:
        assert "tlviztest>focal_ish" in zf.read("config.json").decode()
    loaded = load_model(path)
    assert loaded.n_outputs == 2
