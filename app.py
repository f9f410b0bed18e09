"""tlviz: the router. Run with ``streamlit run app.py``."""

from tlviz.quiet import quiet_tensorflow

# Before anything imports TensorFlow: its start-up lines, Keras's progress bars
# and Keras's warnings stay off the server's terminal (errors still show).
quiet_tensorflow()

from pathlib import Path  # noqa: E402

import streamlit as st  # noqa: E402

import ui  # noqa: E402
from ui import signin  # noqa: E402
from tlviz.errors import ConfigError  # noqa: E402

# Page scripts live in pages/. Until some session of a freshly started server
# has run `st.navigation` below, Streamlit treats that folder as a legacy
# multipage app: a page URL opened directly then runs the page without this
# router. Each page's first call, `ui.page_start`, notices that, switches the
# legacy mode off and reruns through this router.
PAGES_DIR = Path(__file__).parent / "pages"

# (file, title, icon, section); a page appears once its file exists.
PAGES = [
    ("overview.py", "Model & images", ":material/dataset:", "Start"),
    ("layers.py", "Freezing status", ":material/ac_unit:", "Fine-tuning"),
    ("finetune.py", "Fine-tuning runs", ":material/model_training:", "Fine-tuning"),
    ("normalization.py", "Normalization", ":material/tune:", "Inference pipeline"),
    ("diagnose.py", "Diagnose", ":material/troubleshoot:", "Start"),
    ("try.py", "Try it", ":material/photo_camera:", "Start"),
]


def navigation():
    sections: dict[str, list] = {}
    for file, title, icon, section in PAGES:
        path = PAGES_DIR / file
        if path.exists():
            sections.setdefault(section, []).append(st.Page(str(path), title=title, icon=icon))
    return st.navigation(sections)


def main() -> None:
    st.set_page_config(page_title="tlviz", page_icon=":material/troubleshoot:", layout="wide")
    gate = signin.gate()  # sign-in first: a visitor not let in sees only that page, and nothing is loaded
    if gate.page is not None:  # every page's address shows it (a bookmarked page, a shared link)
        stand_ins = [st.Page(gate.page, title=title, url_path=Path(file).stem) for file, title, *_ in PAGES[1:]]
        st.navigation([st.Page(gate.page, title="Sign in", default=True), *stand_ins], position="hidden").run()
        return
    try:
        ui.init_state()
        ui.freeze_startup_objects()  # after the sample model is loaded: Keras's per-run collection skips them
        page = navigation()
        signin.signed_in_box()
        ui.sidebar()
        ui.mark_shell_drawn()
        page.run()
    except ConfigError as exc:  # a TLVIZ_* variable the server was started with makes no sense
        st.error(f"tlviz is misconfigured: {exc} Whoever runs this server must fix the setting and restart it.",
                 icon=":material/settings:")


main()
