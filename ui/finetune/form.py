"""The run set-up form: unfreeze depth, rate, epochs, batch, optimizer, preset, head, regularization and
schedule, the controls to queue after a run and the sweep's early-stopping choice."""

from __future__ import annotations

import streamlit as st

from tlviz.finetune import (CONTROL_LABELS, CONTROLS, OPTIMIZER_LABELS, OPTIMIZERS, RunConfig, RunRefused,
                            decide_head, default_preset, depth_choices)
from tlviz.layers import freezing_findings
from tlviz.presets import PRESET_DESCRIPTIONS, applicable_presets
from tlviz.unfreeze import base_weight_layers, unfreeze_plan
from ui.cache import remembered_key
from ui.finetune.common import SESSION, keep_valid
from ui.finetune.launch import on_ray
from ui.widgets import finding_card


def _depth_control(table) -> int:
    choices = depth_choices(table)
    n = len(base_weight_layers(table))
    has_blocks = len(choices) < n + 1
    snap = has_blocks and st.toggle("Snap to block boundaries", value=True, key="ft_snap", persist_state=SESSION,
                                    help="Unfreeze whole named blocks (as MobileNet, ResNet and EfficientNet "
                                         "name them), not the middle of one.")
    if snap:
        labels = dict(choices)
        if st.session_state.get("ft_depth_block") not in labels:
            st.session_state.pop("ft_depth_block", None)
        return int(st.select_slider("Unfreeze depth", options=[d for d, _ in choices], format_func=labels.get,
                                    key="ft_depth_block", persist_state=SESSION,
                                    help="Layers holding weights, counted from the top of the base, that train."))
    if n == 0:
        st.caption("The base holds no weights: only the head can train.")
        return 0
    if st.session_state.get("ft_depth", 0) > n:
        st.session_state["ft_depth"] = n
    return int(st.slider("Unfreeze depth (base layers with weights, from the top)", 0, n, 0, key="ft_depth",
                         persist_state=SESSION,
                         help="0 trains only the head; the maximum unfreezes the whole base."))


def config_form(loaded, images, table) -> RunConfig | None:
    """Draw the config widgets.

    Args:
        loaded: the current `LoadedModel`.
        images: the current `ImageSet`.
        table: the model's layer table (`ui.current_layer_table`).

    Returns:
        The validated `RunConfig`, or None with the reason shown.
    """
    presets = applicable_presets(loaded.channels, teachable=loaded.teachable_machine)
    preset_default = default_preset(st.session_state.get("best_preset"), loaded.recorded_preset)
    if st.session_state.get("ft_preset_default") != (remembered_key(loaded), preset_default):
        st.session_state["ft_preset_default"] = (remembered_key(loaded), preset_default)
        st.session_state["ft_preset"] = preset_default if preset_default in presets else presets[0]
    st.session_state.setdefault("ft_lr", 1e-3)
    head = None
    try:
        head = decide_head(loaded.n_outputs, loaded.class_names, images.class_names, None)
    except RunRefused:
        pass

    c1, c2, c3 = st.columns(3)
    with c1:
        depth = _depth_control(table)
        train_bn = st.session_state.get("ft_bn", "frozen") == "train"
        plan = unfreeze_plan(loaded.model, depth, train_bn, table=table)
        base_rows = plan[(plan["role"] == "base") & plan["would_train"]]
        st.caption(f"Base layers that train: **{len(base_rows)}** ({int(base_rows['would_train_params'].sum()):,} "
                   "parameters), plus the head.")
    with c2:
        lr = st.number_input("Learning rate", min_value=1e-7, max_value=10.0, step=1e-4, format="%.2e",
                             key="ft_lr", persist_state=SESSION, help="The learning-rate finder below suggests one.")
        epochs = st.number_input("Epochs", 1, 500, 5, key="ft_epochs", persist_state=SESSION)
        batch = st.select_slider("Batch size", [8, 16, 32, 64, 128, 256], value=32, key="ft_batch",
                                 persist_state=SESSION)
    with c3:
        optimizer = st.radio("Optimizer", OPTIMIZERS, format_func=OPTIMIZER_LABELS.get, horizontal=True,
                             key="ft_optimizer", persist_state=SESSION)
        preset = st.selectbox("Preset", presets, key="ft_preset", persist_state=SESSION,
                              format_func=lambda p: f"{p} — {PRESET_DESCRIPTIONS[p]}",
                              help="Default: the best preset found on the Normalization page, else the one the "
                                   "model records, else unit.")
        val_fraction = st.slider("Validation share (stratified)", 0.1, 0.5, 0.2, 0.05, key="ft_val",
                                 persist_state=SESSION)

    head_key = f"ft_new_head_{remembered_key(loaded)[:12]}_{st.session_state.get('image_source_key')}"
    if head is not None and head.forced:
        new_head = st.checkbox("New head for the image set's classes", value=True, disabled=True, key=head_key,
                               persist_state=SESSION)
    else:
        new_head = st.checkbox("New head for the image set's classes", value=bool(head and head.new_head),
                               key=head_key, persist_state=SESSION,
                               help="Replace the classification head by a fresh one (pooling, dropout, dense "
                                    "softmax): the standard transfer-learning step.")
    if head is not None:
        st.caption(head.reason[:1].upper() + head.reason[1:] + ".")

    with st.expander("Regularization, BatchNormalization and schedule"):
        r1, r2, r3 = st.columns(3)
        dropout = r1.slider("Dropout of a new head", 0.0, 0.8, 0.2, 0.05, key="ft_dropout", persist_state=SESSION)
        wd = r1.number_input("Weight decay", 0.0, 0.1, 0.0, step=1e-4, format="%.0e", key="ft_wd",
                             persist_state=SESSION)
        augment = r1.checkbox("Light augmentation (flips, shifts)", value=False, key="ft_augment",
                              persist_state=SESSION,
                              help="Off by default. Augmentation changes the images every epoch, so base "
                                   "activations cannot be cached: runs get slower.")
        bn = r2.radio("BatchNormalization", ["frozen", "train"], key="ft_bn", persist_state=SESSION,
                      format_func={"frozen": "keep frozen (inference mode, recommended)",
                                   "train": "train it in the unfrozen part"}.get)
        seed = r2.number_input("Seed", 0, 10**6, 0, key="ft_seed", persist_state=SESSION)
        two_phase = r3.checkbox("Train the new head first (two phases)", value=False, key="ft_two_phase",
                                persist_state=SESSION,
                                help="First the head alone with the base frozen, then unfreeze to the chosen "
                                     "depth at the chosen rate (fastai's fine_tune).")
        head_epochs = r3.number_input("Head-phase epochs", 1, 100, 2, key="ft_head_epochs", persist_state=SESSION,
                                      disabled=not two_phase)
        head_lr = r3.number_input("Head-phase learning rate", 1e-7, 10.0, 1e-3, format="%.2e", step=1e-4,
                                  key="ft_head_lr", persist_state=SESSION, disabled=not two_phase)
        label = st.text_input("Label (shown in the run list)", key="ft_label", persist_state=SESSION, max_chars=80)

    unfreeze_frozen = False
    frozen = [f for f in freezing_findings(loaded.model, table) if f.id == "no-trainable-weights"]
    if frozen:
        finding_card(frozen[0], note="A run on this model as it is refuses to start: training would change nothing.")
        unfreeze_frozen = st.checkbox("Unfreeze the head for this run (and the chosen depth of the base)",
                                      key="ft_unfreeze_frozen", persist_state=SESSION)
        if not unfreeze_frozen:
            return None
    try:
        return RunConfig(unfreeze=depth, lr=float(lr), epochs=int(epochs), batch_size=int(batch), optimizer=optimizer,
                         preset=preset, val_fraction=float(val_fraction), seed=int(seed), new_head=bool(new_head),
                         head_dropout=float(dropout), weight_decay=float(wd), augment=bool(augment), bn=bn,
                         two_phase=bool(two_phase), head_epochs=int(head_epochs), head_lr=float(head_lr),
                         unfreeze_frozen=unfreeze_frozen, label=label)
    except RunRefused as exc:
        st.error(str(exc), icon=":material/block:")
        return None


def controls_choice(config: RunConfig | None) -> list[str]:
    """The controls to run after the run (multiselect); a head-only control is offered only when the base trains."""
    options = [c for c in CONTROLS if not (c == "head-only" and config is not None and config.unfreeze == 0)]
    keep_valid("ft_controls", options)
    return st.multiselect(
        "Also run controls", options, key="ft_controls", persist_state=SESSION, format_func=CONTROL_LABELS.get,
        help="Random-init: the same configuration on the same architecture with fresh random weights (do the "
             "pre-trained weights help at all?). Head-only: the same configuration with the base frozen (does "
             "unfreezing help?). Each is compared with the run on the same validation images, with a 95 % interval.")


def asha_option() -> bool:
    """The sweep's early-stopping choice: shown (and possible) only when runs go to a Ray cluster."""
    if not on_ray():
        st.caption("On a Ray cluster (set `TLVIZ_RAY_ADDRESS`) a sweep runs through Ray Tune, several runs at once, "
                   "and can stop poor configurations early.")
        return False
    return st.checkbox("Stop poor configurations early (ASHA)", value=True, key="ft_asha", persist_state=SESSION,
                       help="Ray Tune's asynchronous successive halving: after each epoch (from the first), a run "
                            "whose validation loss is worse than most runs' at that epoch stops; the heatmap marks "
                            "it with the epoch it stopped at.")
