"""Charts as static SVG for files that must open offline (`tlviz.htmlreport`): rendered by ``vl-convert``,
the Vega tooling Altair itself uses for offline export, so no script is needed to draw them."""
from __future__ import annotations

import altair as alt

#: Charts that fill the width are drawn this wide (px) in a file.
FILE_WIDTH = 640


def to_svg(chart, width: int = FILE_WIDTH) -> str:
    """An Altair chart as SVG text; a chart without a width of its own is drawn `width` px wide.

    Args:
        chart: an Altair chart.
        width: the width of a chart that fills the page. Defaults to `FILE_WIDTH`.

    Returns:
        The ``<svg>`` element's text (no script, nothing fetched).
    """
    import vl_convert as vlc

    concat = isinstance(chart, (alt.HConcatChart, alt.VConcatChart, alt.ConcatChart))
    if not concat and not isinstance(getattr(chart, "width", alt.Undefined), (int, float)):
        chart = chart.properties(width=width)
    if not concat:
        chart = chart.properties(autosize=alt.AutoSizeParams(type="pad", contains="padding"))
    return vlc.vegalite_to_svg(chart.to_json())
