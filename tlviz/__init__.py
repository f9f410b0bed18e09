"""tlviz: find out why a transfer-learning image classifier is not learning.

The engine package. It never imports Streamlit; pages in ``pages/`` (with ``ui/``) wire its
functions to widgets. Everything here returns plain data (dataclasses, numpy
arrays, pandas DataFrames) or Altair charts.
"""

import os

# TensorFlow prints several lines of C++ start-up chatter; keep the terminal and
# the server log readable unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
