"""Try it: one photo through the model, prepared the way the user's code prepares it and the way the model
expects, side by side: the top classes, how sure the model is, and where it looks (Grad-CAM).

Thin page: a photo (camera, upload or the image set) -> `tlviz.tryit.Explainer.answer` -> charts and overlays.
One photo is a few model passes, answered in the page (``bench/bench_try.py`` measures it).
"""

from __future__ import annotations

import io

import numpy as np
import streamlit as st
from PIL import Image

import ui
from tlviz.charts import top_classes_chart
from tlviz.presets import PRESET_DESCRIPTIONS, applicable_presets
from tlviz.errors import PhotoRefused
from ui.tryit import explainer

PHOTO_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp"]
#: Pictures are drawn this wide (px), whatever the model's input size: readable on a projector.
PICTURE_WIDTH = 260
SOURCES = ["Camera", "Upload a photo", "From the image set"]

ui.page_start()
st.title("Try it")
loaded = ui.require_model()
images = st.session_state.get("images")
st.caption("Show the model one photo. It is prepared the way your inference code prepares it and the way the "
           "model expects, and for each you see the top classes, how sure the model is and where it looks.")

# -- the two preparations ---------------------------------------------------------------------------
presets = list(applicable_presets(loaded.channels, teachable=loaded.teachable_machine
                                  or loaded.recorded_preset == "teachable"))
yours_now = st.session_state.get("inference_preset") or "unit"
if yours_now not in presets:
    presets.append(yours_now)
if loaded.recorded_preset:
    expected_now, source_note = loaded.recorded_preset, "recorded in the model file"
elif st.session_state.get("best_preset"):
    expected_now, source_note = st.session_state["best_preset"], "measured on the Normalization page"
else:
    expected_now, source_note = None, None
c1, c2 = st.columns(2)
yours = c1.selectbox("Your pipeline feeds the model", presets, index=presets.index(yours_now),
                     format_func=lambda p: f"{p} — {PRESET_DESCRIPTIONS.get(p, '')}", key="try_yours",
                     help="The same setting as on the Normalization and Diagnose pages.")
if yours != yours_now:
    st.session_state["inference_preset"] = yours
expected = c2.selectbox("The model expects", presets,
                        index=presets.index(expected_now) if expected_now in presets else 0,
                        format_func=lambda p: f"{p} — {PRESET_DESCRIPTIONS.get(p, '')}", key="try_expected")
if source_note and expected == expected_now:
    c2.caption(f"`{expected_now}`: {source_note}.")
elif not source_note:
    c2.caption("Not measured yet: the [Normalization](/normalization) page finds what the model expects. "
               "Until then, pick one here.")

# -- the photo --------------------------------------------------------------------------------------
choices = SOURCES if images is not None and len(images) else SOURCES[:2]
source = st.radio("Photo", choices, horizontal=True, key="try_source")
data = None
if source == "Camera":
    shot = st.camera_input("Take a photo", key="try_camera")
    data = shot.getvalue() if shot is not None else None
elif source == "Upload a photo":
    up = st.file_uploader("A photo", type=PHOTO_TYPES, key="try_upload")
    data = up.getvalue() if up is not None else None
elif source == "From the image set":
    names = list(images.class_names)
    k1, k2 = st.columns([2, 3])
    cls = k1.selectbox("Class", names, key="try_class")
    members = np.flatnonzero(np.asarray(images.labels) == names.index(cls))
    if not len(members):
        st.info(f"The image set has no image of '{cls}'.", icon=":material/info:")
    else:
        pick = k2.slider("Image", 1, len(members), 1, key="try_pick") if len(members) > 1 else 1
        i = int(members[pick - 1])
        buf = io.BytesIO()
        Image.fromarray(np.squeeze(images.images[i])).save(buf, "PNG")
        data = buf.getvalue()
        k2.caption(f"`{images.files[i]}`")

if data is None:
    st.info("Take a photo, upload one or pick one from the image set: the answers appear here.",
            icon=":material/photo_camera:")
    st.stop()

# -- the answers --------------------------------------------------------------------------------------
try:
    result = explainer(loaded).answer(data, [("Your pipeline", yours), ("What the model expects", expected)],
                                      class_names=list(images.class_names) if images is not None else None)
except PhotoRefused as exc:
    st.error(str(exc), icon=":material/broken_image:")
    st.stop()

left, right = result.answers
if yours == expected:
    ui.alert("info", f"Both sides use `{yours}`: pick another setting on one side to compare.")
elif result.agree:
    st.success(f"Both preparations give **{left.top[0][0]}** ({left.top[0][1]:.0%} with `{yours}`, "
                        f"{right.top[0][1]:.0%} with `{expected}`).", icon=":material/check_circle:")
else:
    ui.alert("warning", f"The preparations disagree: your pipeline (`{yours}`) gives **{left.top[0][0]}** "
                        f"({left.top[0][1]:.0%}), the model's own (`{expected}`) gives **{right.top[0][0]}** "
                        f"({right.top[0][1]:.0%}).")
cols = st.columns([1, 2, 2])
# The photo's column is a fifth of the page: the photo fills it (at PICTURE_WIDTH it spilled over the answers).
cols[0].image(result.photo, width="stretch", caption=f"the photo at {loaded.image_size[1]}×{loaded.image_size[0]}",
              clamp=True)
for col, answer in zip(cols[1:], result.answers):
    with col:
        st.markdown(f"**{answer.role}** · `{answer.preset}`")
        st.altair_chart(top_classes_chart(answer.top), width="stretch")
        if answer.overlay is not None:
            st.image(answer.overlay, width=PICTURE_WIDTH, caption=answer.explained)
if result.heatmap_reason:
    st.caption(f"No Grad-CAM overlay: {result.heatmap_reason}")
st.caption(f"Answered in {result.seconds:.2f} s.")
