"""AppTest: the Freezing status page."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from apptest_helpers import open_app, texts

ROOT = Path(__file__).resolve().parent.parent
PAGE = "pages/layers.py"


def test_layers_page_with_sample():
    at = open_app()
    at.switch_page("pages/layers.py")
    at.run()
    assert not at.exception
    assert at.title[0].value == "Freezing status"
    table = at.dataframe[0].value
    assert "block1_conv" in set(table["path"])
    assert {m.label: m.value for m in at.metric}["Trainable"] == "24,021"
    assert not at.error and not at.warning  # a healthy, fully trainable model: no alarms


def test_layers_page_flags_frozen_sample():
    at = open_app()
    at.selectbox(key="model_choice").set_value("digits_frozen.keras")
    at.run()
    assert at.session_state["model"].name == "digits_frozen"
    at.switch_page("pages/layers.py")
    at.run()
    assert not at.exception
    assert any("No trainable weights" in e.value for e in at.error)
    assert {m.label: m.value for m in at.metric}["Trainable"] == "0"
    assert any("digits_features/" in p for p in at.dataframe[0].value["path"])


def test_unfreeze_preview_slider_does_not_change_model():
    at = open_app()
    at.switch_page("pages/layers.py")
    at.run()
    before = at.session_state["model"].trainable_params
    at.slider(key="layers_preview_depth").set_value(1)
    at.run()
    assert not at.exception
    assert "would train" in texts(at)
    assert at.session_state["model"].trainable_params == before


def test_page_file_runs_on_its_own():
    """``streamlit run pages/layers.py``: no router, so the page draws the state and sidebar itself."""
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Freezing status"
    assert at.sidebar.selectbox(key="model_choice").value == "digits_base.keras"
    assert {m.label: m.value for m in at.metric}["Trainable"] == "24,021"


def test_layers_page_says_a_base_called_with_training_false_runs_in_inference_mode(tmp_path):
    """Issue 13: the recorded call argument is read from the file and shown, and the BN warning stays quiet."""
    import keras

    from apptest_helpers import upload_model

    keras.utils.set_random_seed(0)
    i = keras.Input((32, 32, 3))
    y = keras.layers.Conv2D(4, 3, name="conv")(i)
    y = keras.layers.BatchNormalization(name="bn")(y)
    base = keras.Model(i, keras.layers.GlobalAveragePooling2D(name="pool")(y), name="pinned_base")
    j = keras.Input((32, 32, 3))
    model = keras.Model(j, keras.layers.Dense(5, activation="softmax", name="head")(base(j, training=False)))
    path = tmp_path / "pinned.keras"
    model.save(path)
    at = open_app()
    upload_model(at, "pinned.keras", path.read_bytes())
    assert not at.exception, at.exception
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, at.exception
    assert any("BatchNormalization runs in inference mode: the base `pinned_base` is called with `training=False`"
               in i.value for i in at.info)
    assert not any("BatchNormalization layers are trainable" in w.value for w in at.warning)
    table = at.dataframe[0].value.set_index("path")
    assert table.loc["✱ pinned_base/bn", "inference_by_call"] == "pinned_base"
    assert table.loc["head", "inference_by_call"] == ""


def test_layers_page_shows_trainable_bn_in_a_nested_base_as_advice(tmp_path):
    """Issue 22: trainable BatchNormalization inside a nested base, read from the file, is advice (info), not a
    warning: a model trained end to end has it by design."""
    import keras

    from apptest_helpers import upload_model

    keras.utils.set_random_seed(0)
    i = keras.Input((32, 32, 3))
    y = keras.layers.Conv2D(4, 3, name="conv")(i)
    y = keras.layers.BatchNormalization(name="bn")(y)
    base = keras.Model(i, keras.layers.GlobalAveragePooling2D(name="pool")(y), name="trained_base")
    j = keras.Input((32, 32, 3))
    model = keras.Model(j, keras.layers.Dense(5, activation="softmax", name="head")(base(j)))
    path = tmp_path / "end_to_end.keras"
    model.save(path)
    at = open_app()
    upload_model(at, "end_to_end.keras", path.read_bytes())
    assert not at.exception, at.exception
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, at.exception
    advice = [i.value for i in at.info if "BatchNormalization layers are trainable inside the base" in i.value]
    assert len(advice) == 1 and "Advice for fine-tuning" in advice[0] and "training=False" in advice[0]
    assert not at.warning and not at.error
    roles = at.dataframe[0].value.set_index("path")["role"]
    assert roles["✱ trained_base/bn"] == "base" and roles["head"] == "head"
