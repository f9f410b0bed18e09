"""Freezing status: which layers will train, nested models included."""

import streamlit as st

import ui
from tlviz.charts import params_by_depth
from tlviz.callargs import keras_honours_recorded_training
from tlviz.layers import freezing_findings, inference_by_call_notes, totals
from tlviz.unfreeze import base_weight_layers, unfreeze_plan

ui.page_start()
st.title("Freezing status")
loaded = ui.require_model()
model = loaded.model
table = ui.current_layer_table(loaded)
tot = totals(table)

ui.finding_cards(freezing_findings(model, table))

c = st.columns(3)
c[0].metric("Total params", f"{tot['total_params']:,}")
c[1].metric("Trainable", f"{tot['trainable_params']:,}")
c[2].metric("Non-trainable", f"{tot['non_trainable_params']:,}")
st.caption("The *trainable (effective)* column shows what `fit` will really update: the weights in the model's "
           "`trainable_weights`. Freezing a nested model (`base.trainable = False`) freezes every layer inside it; "
           "parameters of frozen layers count as non-trainable, exactly as Keras counts them.")

st.altair_chart(params_by_depth(table), width="stretch")

n_bn = int(table["is_bn"].sum())
if n_bn:
    st.info(f"{n_bn} BatchNormalization layers (marked ✱ below). A frozen BatchNormalization layer runs in "
            "inference mode: it normalizes with its stored moving mean/variance instead of the batch's "
            "statistics, and does not update them.", icon=":material/info:")
for note in inference_by_call_notes(table):
    caveat = ("" if keras_honours_recorded_training() else
              " The installed Keras passes `fit`'s `training=True` into a nested model whatever its recorded argument "
              "(measured): to keep these layers in inference mode in your own `fit` too, also set `trainable = False` "
              "on them.")
    st.info(note + " tlviz runs it that way in its diagnosis and fine-tuning runs." + caveat, icon=":material/info:")

show = table.copy()
show["path"] = [("✱ " if bn else "") + p for p, bn in zip(show["path"], show["is_bn"])]
only_weights = st.toggle("Only layers with weights", value=False)
if only_weights:
    show = show[show["holds_weights"]]
st.dataframe(
    show[["depth", "path", "class", "output_shape", "trainable_params", "non_trainable_params", "trainable", "role",
          "inference_by_call"]],
    hide_index=True, width="stretch",
    column_config={"trainable": st.column_config.CheckboxColumn("trainable (effective)"),
                   "inference_by_call": st.column_config.TextColumn(
                       "inference mode by call", help="The model around this layer that the graph calls with "
                                                      "`training=False`: the layer always runs in inference mode.")},
)

st.subheader("Preview: unfreeze the top of the base")
base = base_weight_layers(table)
if len(base) == 0:
    st.caption("No base layers with weights: only the head can train.")
else:
    depth = st.slider("Unfreeze depth (layers with weights, counted from the top of the base)",
                      0, len(base), min(2, len(base)), key="layers_preview_depth")
    train_bn = st.checkbox("Also train BatchNormalization layers in that range", value=False,
                           key="layers_preview_bn")
    plan = unfreeze_plan(model, depth, train_bn, table=table)
    n_layers = int(plan["would_train"].sum())
    st.markdown(f"With depth **{depth}**, **{n_layers} layers** would train: "
                f"**{int(plan['would_train_params'].sum()):,}** parameters "
                f"(the loaded model is not changed).")
    st.altair_chart(params_by_depth(plan, "would_train"), width="stretch")
    with st.expander("Layers that would train"):
        st.dataframe(plan[plan["would_train"]][["path", "class", "would_train_params", "role"]],
                     hide_index=True, width="stretch")
