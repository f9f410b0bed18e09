"""The colours and words every tlviz chart uses, so one meaning looks the same on every page.

Colours come from the Okabe–Ito set, which stays distinct under the common forms of
colour blindness, and each is named for what it means rather than for its hue:

- blue is the part that does what it should: a trainable layer, the best preset, the
  accuracy a finding says is possible, the train curve (validation is orange);
- vermillion is what needs a look: a flagged class, the accuracy the user gets when a
  finding explains why it is low, the cells of a label mapping, reference lines (chance,
  a suggested learning rate);
- grey is everything else: a frozen layer, the other presets.

Words shared by charts and tables (trainable / frozen, train / validation, the roles of
compared accuracies) are defined here too; a finding's severity and area words are
`tlviz.findings.SEVERITIES` and `AREAS`, and no chart colours them.

Heatmaps use one sequential scheme, with the number in each cell written white on the
dark end and black on the light end.
"""

from __future__ import annotations

import functools

import altair as alt

# -- words -------------------------------------------------------------------------------

#: A layer whose weights train / do not train (``trainable`` is membership in
#: ``model.trainable_weights``, see `tlviz.layers`).
TRAINABLE = "trainable"
FROZEN = "frozen"
#: The two halves of an image set in a fine-tuning run, as Keras names its metrics (``val_`` prefix).
TRAIN = "train"
VALIDATION = "validation"
#: Roles of the accuracies a finding compares: what it should be, what the user gets, anything else.
EXPECTED = "expected"
MEASURED = "measured"
OTHER = "other"

# -- colours -----------------------------------------------------------------------------

BLUE = "#0072B2"
ORANGE = "#E69F00"
VERMILLION = "#D55E00"
BLUISH_GREEN = "#009E73"
REDDISH_PURPLE = "#CC79A7"
SKY_BLUE = "#56B4E9"
GREY = "#9E9E9E"
#: Thin marks drawn over bars (interval whiskers).
INK = "#333333"
#: Text on a dark / light heatmap cell.
TEXT_ON_DARK = "white"
TEXT_ON_LIGHT = "black"

TRAINABLE_COLOR = BLUE
FROZEN_COLOR = GREY
#: The best setting (preset) and every other one.
BEST_COLOR = BLUE
OTHER_COLOR = GREY
#: A class or cell a finding points at.
FLAG_COLOR = VERMILLION
#: A line to read the bars against: chance accuracy, a suggested learning rate.
REFERENCE_COLOR = VERMILLION
REFERENCE_DASH = [4, 3]

STATUS_COLORS = {TRAINABLE: TRAINABLE_COLOR, FROZEN: FROZEN_COLOR}
SPLIT_COLORS = {TRAIN: BLUE, VALIDATION: ORANGE}
ROLE_COLORS = {EXPECTED: BLUE, MEASURED: VERMILLION, OTHER: GREY}
#: Colours for things with no meaning of their own (one run each in a comparison), in order.
CATEGORY_COLORS = [BLUE, ORANGE, BLUISH_GREEN, VERMILLION, REDDISH_PURPLE, SKY_BLUE, INK, GREY]
#: The Vega scheme of every heatmap (light = few / low, dark = many / high).
SEQUENTIAL_SCHEME = "blues"


def scale(colors: dict) -> alt.Scale:
    """A categorical scale from words to their colours.

    Args:
        colors: word -> colour, e.g. `STATUS_COLORS`; the legend keeps its order.

    Returns:
        An `alt.Scale` with that domain and range.
    """
    return alt.Scale(domain=list(colors), range=list(colors.values()))


def flag(field: str, color: str, other: str = OTHER_COLOR) -> alt.Color:
    """Colour by a boolean column: `color` where it is true, `other` elsewhere, no legend.

    Args:
        field: the boolean column, e.g. ``"is_best"``.
        color: the colour of the true rows, e.g. `BEST_COLOR` or `FLAG_COLOR`.
        other: the colour of the false rows. Defaults to `OTHER_COLOR`.

    Returns:
        An `alt.Color` encoding.
    """
    return alt.Color(f"{field}:N", scale=alt.Scale(domain=[True, False], range=[color, other]), legend=None)


def sequential(domain: list | None = None) -> alt.Scale:
    """The heatmap scale (`SEQUENTIAL_SCHEME`).

    Args:
        domain: the values at the light and the dark end. Defaults to `None`
            (the data's range).

    Returns:
        An `alt.Scale`.
    """
    return alt.Scale(scheme=SEQUENTIAL_SCHEME) if domain is None else alt.Scale(scheme=SEQUENTIAL_SCHEME, domain=domain)


def cell_text(dark: str) -> dict:
    """The colour of the number written in a heatmap cell: readable on the cell's shade.

    Args:
        dark: a Vega expression true on the dark cells, e.g. ``"datum.share > 0.5"``.

    Returns:
        A conditional colour encoding (`alt.condition`).
    """
    return alt.condition(dark, alt.value(TEXT_ON_DARK), alt.value(TEXT_ON_LIGHT))


# -- size --------------------------------------------------------------------------------

#: How a chart that fills the page's width is sized (Vega-Lite ``autosize``): the width is fitted, the plot keeps
#: the height the chart asks for, and axes, labels and title are added around it. Without it Streamlit sizes the
#: whole chart, labels included, into that height (``fit``), so long axis labels squeeze the plot to a strip and
#: titles are clipped.
FILL_WIDTH = {"type": "fit-x", "contains": "padding"}
#: How a concatenation (panels side by side) is sized: as drawn, decorations added. A single chart with a width of
#: its own is sized `FILL_WIDTH` too, its width then being the whole chart's: Streamlit draws every chart that is not
#: a concatenation at the width of its container (``st.altair_chart``'s default ``width="stretch"``), replacing the
#: spec's width, so with ``pad`` the axes, legend and title were added outside the container and cut off.
NATURAL_SIZE = {"type": "pad", "contains": "padding"}
#: Space (px) between a chart's drawing and the edge of its SVG. Streamlit's theme draws charts with none, so a
#: title at the top-left corner reached past the SVG's edge (its text box began 2.5 px above it, where the SVG
#: clips tall glyphs such as parentheses and accents).
PADDING = {"top": 6, "left": 4, "right": 4, "bottom": 4}
#: Room (px) a chart with a width of its own leaves for its axis labels and titles and its legend beside the plot
#: (its width is the whole chart's, see `NATURAL_SIZE`).
DECORATIONS = 180


def sized(chart):
    """`chart` with the `autosize` that keeps its plot at the size it asks for (see `FILL_WIDTH`).

    Args:
        chart: an Altair chart (anything else, e.g. None, is returned as it is).

    Returns:
        The chart with ``autosize`` set: `NATURAL_SIZE` for a concatenation, else `FILL_WIDTH` (a width of its
        own is the whole chart's, axes and legend included); and `PADDING` unless it has a padding of its own.
    """
    if not isinstance(chart, alt.TopLevelMixin):
        return chart
    concat = isinstance(chart, (alt.HConcatChart, alt.VConcatChart, alt.ConcatChart))
    extra = {} if getattr(chart, "padding", alt.Undefined) is not alt.Undefined else {"padding": PADDING}
    return chart.properties(autosize=alt.AutoSizeParams(**(NATURAL_SIZE if concat else FILL_WIDTH)),
                            **extra)


def legible(builder):
    """Decorator of every chart builder: its chart comes back `sized`, wherever it is drawn."""

    @functools.wraps(builder)
    def build(*args, **kwargs):
        return sized(builder(*args, **kwargs))

    return build
