"""Keep TensorFlow and Keras quiet on the terminal (the command line and ``streamlit run``).

TensorFlow 2.21 prints start-up lines from C++ straight to file descriptor 2
while it is imported ("oneDNN custom operations are on", "Could not find cuda
drivers", "All log messages before absl::InitializeLog() is called..."): they
come before its logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not hide
them. `quiet_tensorflow` imports TensorFlow and Keras once with descriptor 2
pointed at a temporary file, then writes back to stderr every captured line
that is not such chatter (or everything, when the import fails). After that,
``TF_CPP_MIN_LOG_LEVEL`` does its job; Keras's progress bars and Python
warnings issued by Keras are switched off.

Call it before anything imports TensorFlow: first thing in ``python -m tlviz``
and at the top of ``app.py``.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading

#: The default for ``TF_CPP_MIN_LOG_LEVEL``: hide C++ info and warning lines, keep errors.
DEFAULT_TF_LOG_LEVEL = "2"

# A glog/absl line: "I0000 00:00:1796185468.737984    5406 port.cc:153] ...".
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]\s]+\] ")
_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}
# Lines that only say "no GPU here": TensorFlow runs on the CPU, as tlviz expects.
_NO_GPU = ("failed call to cuInit", "Could not find cuda drivers", "could not retrieve CUDA device count")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"

_LOCK = threading.Lock()  # two sessions of the app must not redirect descriptor 2 at once


def quiet_tensorflow() -> None:
    """Import TensorFlow and Keras without their start-up chatter and keep them quiet.

    Sets ``TF_CPP_MIN_LOG_LEVEL`` (unless already set), imports TensorFlow and
    Keras with file descriptor 2 captured, writes back the captured lines that
    are not start-up chatter, switches off Keras's progress bars and ignores
    Python warnings from Keras. Safe to call again (later calls are cheap) and
    from several threads. When TensorFlow was already imported, only the last
    three steps apply.

    Raises:
        Whatever importing TensorFlow raises; everything it printed is then
        written to stderr unfiltered.
    """
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL)
    with _LOCK:
        if "tensorflow" not in sys.modules:
            _import_capturing_stderr()
    warnings.filterwarnings("ignore", module="keras")
    import logging

    import keras
    import tensorflow as tf

    keras.utils.disable_interactive_logging()
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _import_capturing_stderr() -> None:
    """Import TensorFlow and Keras (and find the devices) with descriptor 2 captured."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no usable stderr: nothing to protect
        _import_tensorflow()
        return
    failed = True
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            try:
                _import_tensorflow()
                failed = False
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        finally:
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = text if failed else filter_tensorflow_chatter(text)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def _import_tensorflow() -> None:
    import tensorflow as tf
    import keras  # noqa: F401  (loads a second copy of TensorFlow's C++ logging, which prints again)

    tf.config.list_physical_devices()  # looking for a GPU prints too


def filter_tensorflow_chatter(text: str, min_level: int | None = None) -> str:
    """Drop TensorFlow's start-up chatter from captured stderr text.

    A log line ("I0000 00:00:... file.cc:12] message") is dropped when its level
    is below `min_level` or it only says that there is no GPU; lines that
    continue a log line share its fate; the absl "All log messages before
    absl::InitializeLog()" notice is dropped. Every other line is kept.

    Args:
        text: what was written to stderr.
        min_level: 0 (info) to 3 (fatal): the lowest level kept. Defaults to
            ``TF_CPP_MIN_LOG_LEVEL`` (2 when unset or not a number).

    Returns:
        The kept lines, in order, each ending with a newline.
    """
    if min_level is None:
        try:
            min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_LOG_LEVEL))
        except ValueError:
            min_level = int(DEFAULT_TF_LOG_LEVEL)
    kept = []
    keep_continuation = True
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if m:
            level = _LEVELS[m.group(1)]
            no_gpu = level < 3 and any(s in line for s in _NO_GPU)
            keep_continuation = level >= min_level and not (no_gpu and min_level >= 2)
            if keep_continuation:
                kept.append(line)
        elif line.strip() == _ABSL_PREAMBLE:
            keep_continuation = False
        elif keep_continuation:
            kept.append(line)
    return "".join(line + "\n" for line in kept)
