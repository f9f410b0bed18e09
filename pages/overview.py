"""Model & images: what is loaded, in numbers."""

import functools
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from tlviz.charts import class_counts
from tlviz.models import keras_bytes

ui.page_start()
st.title("Model & images")
st.caption("Load your Keras model and a labelled image set in the sidebar. Every page measures this model on "
           "these images.")

loaded, images = ui.current()
if loaded is None:
    st.info("Load a model in the sidebar.")
    st.stop()

st.subheader(f"Model: {loaded.name}")
c = st.columns(4)
c[0].metric("Input shape", " × ".join("?" if d is None else str(d) for d in loaded.input_shape))
c[1].metric("Outputs", loaded.n_outputs)
c[2].metric("Trainable params", f"{loaded.trainable_params:,}")
c[3].metric("Non-trainable params", f"{loaded.non_trainable_params:,}")
st.caption(f"File: {loaded.filename} · total parameters {loaded.total_params:,} · {loaded.origin}")
if loaded.teachable_machine:
    st.info("**Teachable Machine image model**: MobileNetV2 features, then a two-layer head. Teachable Machine "
            "prepares each image by cropping the centre square, resizing it to "
            f"{loaded.image_size[0]}×{loaded.image_size[1]} and scaling pixels to [-1, 1] (x / 127.5 − 1): that is "
            "the `teachable` setting on the Normalization and Diagnose pages." +
            (f" Class names from labels.txt: {', '.join(loaded.class_names)}." if loaded.class_names else
             " Upload the export's zip (keras_model.h5 + labels.txt) to get the class names too."),
            icon=":material/school:")
if loaded.conversion:
    st.info(loaded.conversion["summary"] + " Nothing from the file was run: the architecture was rewritten as data "
            "and rebuilt from Keras's own layers, then the weights were copied in layer by layer.",
            icon=":material/published_with_changes:")
    st.download_button("Download the converted model (.keras)", data=functools.partial(keras_bytes, loaded),
                       file_name=f"{Path(loaded.filename).stem or loaded.name}.keras", mime="application/zip",
                       icon=":material/download:", key="download_converted")
if loaded.builtin_preprocessing:
    st.info("Preprocessing built into the model (it expects raw 0–255 pixels):\n\n"
            + "\n".join(f"- {p}" for p in loaded.builtin_preprocessing), icon=":material/tune:")
else:
    st.caption("No preprocessing layers (Rescaling / Normalization) at the model's input: your code must "
               "normalize images the way the model was trained.")
if loaded.metadata:
    meta = ", ".join(f"{k}: {v}" for k, v in loaded.metadata.items() if k in ("preset", "class_names", "note"))
    if meta:
        st.caption(f"Recorded with the model — {meta}")

st.subheader("Image set")
if images is None:
    st.info("Load an image set in the sidebar: a .zip or a server folder with one sub-folder per class.")
    st.stop()
c = st.columns(3)
c[0].metric("Images", len(images))
c[1].metric("Classes", len(images.class_names))
c[2].metric("Skipped files", len(images.skipped))
if images.matches(loaded.n_outputs):
    st.success(f"{len(images.class_names)} classes match the model's {loaded.n_outputs} outputs.",
               icon=":material/check_circle:")
elif len(images.class_names) >= 2:
    st.warning(f"The image set has {len(images.class_names)} classes but the model has {loaded.n_outputs} "
               "outputs: accuracy cannot be measured with this head. Fine-tune with a new head, or load the "
               "matching image set.", icon=":material/warning:")
for warning in images.class_warnings():
    st.warning(warning, icon=":material/warning:")
order = "from labels.txt" if images.label_order_from_file else "sorted folder names"
st.caption(f"Source: {images.source} · class order {order} · resized to "
           f"{images.image_size[0]}×{images.image_size[1]} ({images.resize})")
st.altair_chart(class_counts(images.counts), width="stretch")
if images.skipped:
    with st.expander(f"{len(images.skipped)} skipped files", expanded=len(images.skipped) <= 10):
        st.dataframe(pd.DataFrame([{"file": s.file, "reason": s.reason} for s in images.skipped]),
                     hide_index=True, width="stretch")
n_show = min(8, len(images))
if n_show:
    st.caption("A few images as the model sees them (after resizing):")
    step = max(1, len(images) // n_show)
    idx = list(range(0, len(images), step))[:n_show]
    st.image([images.images[i] for i in idx], caption=[images.class_names[images.labels[i]] for i in idx],
             width=96)
