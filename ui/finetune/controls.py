"""A run's controls (random-init, head-only): the comparison with each, buttons for the missing ones, and the
catastrophic-forgetting verdict, also for the Diagnose page (`judged_with_runs`)."""

from __future__ import annotations

import streamlit as st

from tlviz import charts
from tlviz.errors import TlvizError
from tlviz.finetune import CONTROL_LABELS, CONTROLS, RunRecord, RunRefused, compare, control_config, controls_of
from tlviz.stats import wilson_interval
from ui.finetune.launch import start
from ui.state import workspace
from ui.widgets import finding_card


def run_controls(rec: RunRecord, out, loaded, images, current_images_key: str, records: list) -> None:
    """The run's controls: the comparison with each, buttons for the missing ones, and the forgetting verdict."""
    from tlviz.diagnose import judge_run

    if rec.control is not None:
        st.caption(f"This run is the {CONTROL_LABELS.get(rec.control, rec.control)} of run `{rec.control_of}`: "
                   "open that run to see the comparison.")
        return
    st.markdown("##### Controls")
    mine = controls_of(rec.run_id, records)
    comparisons = [compare(rec, c) for c in mine]
    rows = [{"run": "this run", "accuracy": out.val_accuracy, "n": len(out.val_indices)}]
    for c, cmp in zip(mine, comparisons):
        st.write(cmp.sentence())
        if cmp.difference is not None:
            rows.append({"run": f"{CONTROL_LABELS[cmp.kind]} ({c.run_id})", "accuracy": cmp.control_accuracy,
                         "n": cmp.difference.n})
    if len(rows) > 1 and out.val_accuracy is not None:
        import pandas as pd

        frame = pd.DataFrame(rows)
        bounds = [wilson_interval(int(round(a * n)), n) for a, n in zip(frame["accuracy"], frame["n"])]
        frame["low"], frame["high"] = [b[0] for b in bounds], [b[1] for b in bounds]
        st.altair_chart(charts.control_chart(frame))
    have = {c.control for c in mine}
    missing = [k for k in CONTROLS if k not in have and not (k == "head-only" and rec.config.get("unfreeze") == 0)]
    same = (loaded is not None and rec.model_sha256 == loaded.sha256 and rec.image_key == current_images_key
            and rec.run_config is not None)
    busy = st.session_state.get("ft_job") is not None
    if missing:
        if not same:
            st.caption("Load the model and the image set this run used to run its controls.")
        cols = st.columns(len(missing))
        for col, kind in zip(cols, missing):
            if col.button(f"Run the {CONTROL_LABELS[kind]}", key=f"ft_control_{kind}", disabled=not same or busy,
                          icon=":material/science:",
                          help="The same configuration with fresh random weights (seeded)" if kind == "random-init"
                          else "The same configuration with the base frozen (unfreeze depth 0)"):
                try:
                    cfg = control_config(rec.run_config, kind, rec.run_id)
                except RunRefused as exc:
                    st.error(str(exc), icon=":material/block:")
                else:
                    start("runs", loaded, images, cfg, [cfg])
    verdict = judge_run(rec, mine)
    if verdict.finding is not None:
        finding_card(verdict.finding, evidence=True)
    elif verdict.fires is None:
        st.info(f"Catastrophic forgetting: {verdict.reason}", icon=":material/help:")
    else:
        st.caption(f"Catastrophic forgetting: no. {verdict.reason}")


def judged_with_runs(report, loaded, current_images_key: str):
    """A `DiagnosisReport` with ``catastrophic-forgetting`` judged on this workspace's runs of the current model on
    the current images (`tlviz.diagnose.forgetting.with_runs`); the report itself when there are none."""
    from tlviz.diagnose import runs_for, with_runs

    try:
        records = runs_for(loaded.sha256, current_images_key, workspace())
    except TlvizError:
        return report
    return with_runs(report, records) if records else report
