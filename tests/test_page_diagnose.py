"""The Diagnose page, driven through the router with the sample preloaded.

The diagnosis runs in a real worker process (`tlviz.jobs`); `settle` reruns the
page as its polling fragment would until the job is done.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.delta_generator import DeltaGenerator
from apptest_helpers import open_page, settle, texts, upload_model
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGE = "pages/diagnose.py"


@pytest.fixture(scope="module")
def downloads():
    """Records every download button's label and data (wiring check; the button itself still runs)."""
    seen: list[dict] = []
    original = DeltaGenerator.download_button

    def recording(self, label, data, *args, **kwargs):
        seen.append({"label": label, "data": data, "file_name": kwargs.get("file_name"), "mime": kwargs.get("mime")})
        return original(self, label, data, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(DeltaGenerator, "download_button", recording)
    yield seen
    mp.undo()


@pytest.fixture(scope="module")
def page(downloads, module_runs) -> AppTest:
    at = open_page(PAGE)
    assert at.session_state["diag_job"] is not None  # the sample starts on its own, in a worker
    assert at.button(key="diag_cancel") and at.get("progress")  # its progress panel
    return settle(at, "diag_job")


def test_first_visit_runs_on_the_sample_and_ranks_findings(page):
    at = page
    report = at.session_state["diagnosis"]
    assert report.inference_preset == "unit"  # the session's default inference preset
    assert [f.id for f in report.findings][0] == "normalization-mismatch"
    assert any("Your inference preset `unit`" in e.value for e in at.error)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Errors"] == "1" and metrics["Warnings"] == "0"
    assert "Inference pipeline" in [s.value for s in at.subheader]
    # Evidence: a table and a chart of the accuracies; the fix with its snippet.
    assert at.get("vega_lite_chart")
    assert any(m.value.startswith("**Fix.**") and "x / 127.5 - 1.0" in m.value for m in at.markdown)
    assert [e.label for e in at.expander] == ["Evidence and fix"] * len(report.findings)
    strips = at.get("image")  # images whose prediction changes, then images that flip in training mode
    assert len(strips) == 2 and len(strips[0].proto.imgs) == 8
    assert strips[0].proto.imgs[0].caption == Path(report.findings[0].evidence["example_files"][0]).stem


def test_markdown_and_json_downloads_carry_the_report(page, downloads):
    report = page.session_state["diagnosis"]
    last = {d["mime"]: d for d in downloads}
    assert last["text/markdown"]["data"] == report.to_markdown()
    assert last["text/markdown"]["file_name"] == "tlviz-diagnosis-digits_base.md"
    obj = json.loads(last["application/json"]["data"])
    assert obj == json.loads(json.dumps(report.to_dict()))
    assert obj["findings"][0]["id"] == "normalization-mismatch"
    assert [b.label for b in page.get("download_button")][:2] == ["Markdown", "JSON"]


def test_the_html_report_is_prepared_in_a_worker_and_downloads_as_one_file(page, downloads):
    """Issue 24: the HTML file's Grad-CAM overlays are measured in a worker job, then the file downloads."""
    at = page
    at.button(key="diag_html_prepare").click().run()
    assert not at.exception, at.exception
    settle(at, "diag_html_job")
    assert not at.exception, at.exception
    html = {d["mime"]: d for d in downloads}["text/html"]
    assert html["file_name"] == "tlviz-diagnosis-digits_base.html"
    text = html["data"]
    assert "<script" not in text.lower() and "normalization-mismatch" in text and "<svg" in text
    assert "explains &#x27;" in text  # where the model looks, beside the example images


def test_preset_select_box_is_bound_and_rejudges_instantly(page):
    at = page
    at.selectbox(key="diag_inference_widget").set_value("tf").run()
    assert not at.exception
    assert at.session_state["inference_preset"] == "tf"
    assert not at.error and not at.warning
    assert any("No errors or warnings" in s.value for s in at.success)
    assert at.session_state["diagnosis"].inference_preset == "tf"
    at.button(key="diag_run").click().run()  # the result is stored: the button starts no new job
    assert not at.exception and at.session_state["diag_job"] is None
    at.selectbox(key="diag_inference_widget").set_value("unit").run()


def test_custom_inference_preset_from_the_normalization_page_is_kept(page):
    at = page
    custom = "custom(scale=0.00392157, mean=0.5, std=0.5)"
    at.session_state["inference_preset"] = custom
    at.run()
    assert not at.exception
    assert at.session_state["inference_preset"] == custom
    assert any("is a custom one" in c.value for c in at.caption)
    assert at.session_state["diagnosis"].inference_preset == "unit"
    at.selectbox(key="diag_inference_widget").set_value("tf").run()
    assert at.session_state["inference_preset"] == "tf"


def test_skipped_checks_are_listed_and_frozen_sample_flagged(module_runs):
    at = open_page(PAGE)
    at.selectbox(key="images_choice").set_value("digits_5_9").run()
    settle(at, "diag_job")
    assert not at.exception
    report = at.session_state["diagnosis"]
    assert "label-order-mismatch" in {s.id for s in report.skipped}
    assert "Skipped checks" in [s.value for s in at.subheader]
    assert any("label-order-mismatch" in m.value and "recorded with the model" in m.value for m in at.markdown)
    assert any("classes are not among the model's outputs" in e.value for e in at.error)
    at.selectbox(key="model_choice").set_value("digits_frozen.keras").run()
    settle(at, "diag_job")
    assert not at.exception
    assert any("No trainable weights" in e.value for e in at.error)
    assert "Fine-tuning" in [s.value for s in at.subheader]


def test_uploaded_model_waits_for_the_button_and_can_be_cancelled(tmp_path, module_runs):
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(4, 3, name="conv")(x))
    keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="head")(x), name="mine").save(
        tmp_path / "mine.keras")
    at = upload_model(open_page(PAGE), "mine.keras", (tmp_path / "mine.keras").read_bytes())
    assert not at.exception
    assert at.session_state["model"].name == "mine"
    assert any("Press **Diagnose**" in i.value for i in at.info)
    assert not at.get("download_button") and at.session_state["diag_job"] is None
    # Started, then cancelled: the page says so and offers the button again.
    at.button(key="diag_run").click().run()
    assert at.session_state["diag_job"] is not None
    at.button(key="diag_cancel").click().run()
    assert not at.exception and at.session_state["diag_job"] is None
    assert "was cancelled" in texts(at) and any("Press **Diagnose**" in i.value for i in at.info)
    at.button(key="diag_run").click().run()
    settle(at, "diag_job")
    assert not at.exception
    assert at.session_state["diagnosis"].model_name == "mine"
    assert any("normalizes its input itself" in e.value for e in at.error)  # double normalization with `unit`
    # no finding has example images here, so the HTML file needs no Grad-CAM job: it downloads at once
    assert [b.label for b in at.get("download_button")] == ["Markdown", "JSON", "HTML (self-contained)"]


# -- Repair (issue 15) ----------------------------------------------------------------------------------

def test_repair_action_proves_the_repair_offers_the_file_and_makes_it_current(page, downloads):
    """The real repair job (a worker process) on the sample fed `unit`, then 'make this the current model'."""
    at = page
    at.selectbox(key="diag_inference_widget").set_value("unit").run()
    assert not at.exception
    key = "rep_normalization-mismatch"
    assert at.button(key=f"{key}_run") and at.radio(key=f"{key}_target").value == "raw"
    assert "rep_several_run" not in [b.key for b in at.button]  # one fixable finding: no combined repair
    at.button(key=f"{key}_run").click().run()
    assert at.session_state[f"{key}_job"] is not None
    settle(at, f"{key}_job")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Before (original, fed `unit`)"].endswith("%")
    assert metrics["After (repaired file, fed `raw`)"] == "100.0%"
    assert int(metrics["Held-out images"]) < len(at.session_state["images"])  # the other half estimated
    assert any("95 % interval of the gain" in c.value and "held-out" in c.value for c in at.caption)
    repaired = [d for d in downloads if d["file_name"] == "digits_base_repaired.keras"][-1]
    assert repaired["data"][:2] == b"PK"
    markdown = [d for d in downloads if d["mime"] == "text/markdown"][-1]["data"]
    assert "## Repairs applied" in markdown and "`normalization-mismatch`" in markdown
    # Another option: the earlier repair stays shown, labelled, until this one is made.
    at.radio(key=f"{key}_target").set_value("inference").run()
    assert any("made with other options" in c.value for c in at.caption)
    at.radio(key=f"{key}_target").set_value("raw").run()
    assert not any("made with other options" in c.value for c in at.caption)
    # Make it current: the sample stays in the sidebar's history.
    at.button(key=f"{key}_adopt").click().run()
    assert not at.exception
    assert at.session_state["model"].filename == "digits_base_repaired.keras"
    assert at.session_state["model"].recorded_preset == "raw"
    assert at.session_state["inference_preset"] == "raw"
    assert at.radio(key="model_kind").value == "History"
    labels = [h["label"] for h in at.session_state["model_history"]]
    assert labels[0].startswith("digits_base_repaired.keras") and "digits_base.keras (before repair)" in labels
    assert any("is the current model" in s.value for s in at.success)
    # Back to the sample from the history: nothing was lost.
    previous = next(h["key"] for h in at.session_state["model_history"] if "before repair" in h["label"])
    at.selectbox(key="model_history_choice").set_value(previous).run()
    assert not at.exception
    assert at.session_state["model"].filename == "digits_base.keras"
    at.radio(key="model_kind").set_value("Sample").run()
    at.selectbox(key="diag_inference_widget").set_value("unit").run()
    assert not at.exception and at.session_state["model"].filename == "digits_base.keras"


def test_frozen_model_repair_wiring_opens_fine_tuning(frozen_model_path, base_images, module_runs, monkeypatch):
    """Wiring only: the repair itself is computed here by the engine (not in a worker), the page shows it."""
    from tlviz.models import load_model
    from tlviz.repair import repair
    from ui import repair as panel

    result = repair(load_model(frozen_model_path), base_images, ["no-trainable-weights"], "unit")
    asked = []

    def analysis(kind, params=None, *, start=False, auto=False, prefix):
        asked.append((kind, params, prefix))
        return (result, None) if prefix == "rep_no-trainable-weights" else (None, None)

    monkeypatch.setattr(panel, "analysis", analysis)
    at = open_page(PAGE, model="digits_frozen.keras")
    settle(at, "diag_job")
    assert not at.exception
    assert ("repair", {"fixes": ["no-trainable-weights"], "inference_preset": "unit", "top_block": False},
            "rep_no-trainable-weights") in asked
    assert at.checkbox(key="rep_no-trainable-weights_top").value is False
    tables = [t.value for t in at.dataframe]
    assert any("trainable" in t.columns and "new_head" in set(t.get("path", [])) for t in tables)
    assert "rep_several_run" in [b.key for b in at.button]  # two fixable findings: a combined repair too
    at.button(key="rep_no-trainable-weights_finetune").click().run()
    assert not at.exception
    assert at.session_state["model"].filename == "digits_frozen_repaired.keras"
    assert at.session_state["model"].trainable_params == 325


def test_catastrophic_forgetting_is_judged_on_this_sessions_runs_of_the_model_and_images(page, module_runs):
    """Wiring: the stored diagnosis skips catastrophic-forgetting (a model file has no runs); once this session has
    a planted run (whole base at Adam 0.1) and its head-only control on the same model and images, the page shows
    the finding, and its downloads include it."""
    from tlviz.contentkeys import pixels_key
    from tlviz.finetune.config import RunConfig, control_config
    from tlviz.finetune.run import run_finetune
    from tlviz.finetune.store import RunWriter

    at = page
    at.run()
    assert "catastrophic-forgetting" in [s.id for s in at.session_state["diagnosis"].skipped]
    loaded, images = at.session_state["model"], at.session_state["images"]
    planted = RunConfig(unfreeze=6, lr=1e-1, epochs=1, preset="tf")
    run_id = "20250101-000000-000aaaa"
    for rid, cfg in ((run_id, planted), ("20250101-000001-000bbbb", control_config(planted, "head-only", run_id))):
        w = RunWriter(module_runs / rid)
        w.write_config(cfg, {"sha256": loaded.sha256}, {"image_key": pixels_key(images.images)},
                       owner=at.session_state["workspace"])
        w.status(run_finetune(loaded, images, cfg, writer=w, save=False).state)
    at.run()
    assert not at.exception
    report = at.session_state["diagnosis"]
    assert "catastrophic-forgetting" in [f.id for f in report.findings]
    assert any(f"Catastrophic forgetting: run {run_id}" in w.value for w in at.warning)
    assert "catastrophic-forgetting" in report.to_markdown()


def test_an_all_clear_makes_no_claim_the_other_evidence_contradicts(loaded_base, base_images, module_runs,
                                                                     monkeypatch):
    """Wiring only: a diagnosis computed here (a copy of the sample whose fingerprint prefers `raw` while `tf`
    scores best; the user runs `tf`) is shown without "which is what you use", with the conflict named."""
    import ui
    from test_diagnose import PRESET_CHECKS, fooled_fingerprint
    from tlviz.diagnose import diagnose

    report = diagnose(fooled_fingerprint(loaded_base, base_images, "raw"), base_images, "tf", checks=PRESET_CHECKS)
    expected = report.expected_preset  # the most accurate preset, which the user runs: the claim to hold back
    assert report.preset_conflicts and expected in ("tf", "torch")
    monkeypatch.setattr(ui, "analysis", lambda kind, params=None, *, start=False, auto=False, prefix: (report, None))
    at = open_page(PAGE)
    at.selectbox(key="diag_inference_widget").set_value(expected).run()
    assert not at.exception
    shown = texts(at)
    assert "No errors or warnings" in shown and "which is what you use" not in shown
    assert "Conflicting evidence on the preset the model expects" in shown and "fingerprint prefers `raw`" in shown
