"""Progress of a long command, on stderr.

One `ProgressReporter` serves every sub-command. It takes the engine's
callbacks as they are (``progress(fraction, text)`` from `tlviz.normalize.analyze`
and `tlviz.diagnose.diagnose`; `tlviz.commands.finetune` turns the fine-tuning
progress dict into the same two values) and shows them two ways:

- on a terminal, one bar redrawn in place with ``\\r``:
  ``[#########-----------]  45%  0:12  Check 8 of 17 (...): Evaluating tf…``;
- otherwise (a log file, a pipe, CI), one line per step, printed when the text
  changes and at most one every `line_every` seconds:
  ``[ 45%  0:12] Check 8 of 17 (...): Evaluating tf…``.

Text that changes every batch (a batch counter) goes in ``detail``: the bar
shows it, the lines do not.
"""

from __future__ import annotations

import shutil
import sys
import time

#: Seconds between two redraws of the bar on a terminal.
REDRAW_EVERY_S = 0.1
#: Seconds between two progress lines when stderr is not a terminal.
LINE_EVERY_S = 1.0
_BAR_WIDTH = 20


class ProgressReporter:
    """Shows how far a long command has got, on a terminal or as log lines.

    Use it as a callback (``reporter(fraction, text)``) and close it when the
    work is done (``with ProgressReporter() as reporter: ...`` does).

    Args:
        stream: where to write. Defaults to `sys.stderr` (looked up when writing).
        enabled: `False` (``--quiet``) makes every method do nothing. Defaults to `True`.
        tty: draw a bar redrawn in place (`True`) or print lines (`False`).
            Defaults to ``stream.isatty()``.
        line_every: at most one line per this many seconds in line mode; a step
            whose line was held back is printed at the next update after that,
            unless a newer step replaced it. Defaults to `LINE_EVERY_S`.
        redraw_every: at most one redraw of the bar per this many seconds.
            Defaults to `REDRAW_EVERY_S`.
        clock: a function returning seconds. Defaults to `time.monotonic`.
    """

    def __init__(self, stream=None, *, enabled: bool = True, tty: bool | None = None,
                 line_every: float | None = None, redraw_every: float | None = None, clock=time.monotonic):
        self._stream = stream
        self.enabled = enabled
        self._tty = tty
        self.line_every = LINE_EVERY_S if line_every is None else line_every
        self.redraw_every = REDRAW_EVERY_S if redraw_every is None else redraw_every
        self._clock = clock
        self._t0 = None
        self._fraction = 0.0
        self._text = ""
        self._detail = ""
        self._printed_text = None  # line mode: the last step printed
        self._last_write = None
        self._drawn = 0  # tty mode: characters of the bar now on screen

    @property
    def stream(self):
        """The stream written to."""
        return self._stream if self._stream is not None else sys.stderr

    @property
    def tty(self) -> bool:
        """Whether the bar is redrawn in place (the stream is a terminal)."""
        if self._tty is None:
            try:
                self._tty = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                self._tty = False
        return self._tty

    def __call__(self, fraction: float | None, text: str, detail: str = "") -> None:
        self.update(fraction, text, detail)

    def update(self, fraction: float | None, text: str, detail: str = "") -> None:
        """Report progress.

        Args:
            fraction: 0 to 1, how much of the whole command is done; `None`
                keeps the last value.
            text: the current step, e.g. "Epoch 3 of 10". A new text is a new step.
            detail: what changes within a step (e.g. "batch 5 of 12"); shown on
                the bar only. Defaults to "".
        """
        if not self.enabled:
            return
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        if fraction is not None:
            self._fraction = min(max(float(fraction), 0.0), 1.0)
        new_step = str(text) != self._text
        self._text, self._detail = str(text), str(detail)
        due = self._last_write is None or now - self._last_write >= (
            self.redraw_every if self.tty else self.line_every)
        if self.tty:
            if due or new_step:  # a new step shows at once: it may run long without another update
                self._draw(now)
        elif due and self._text != self._printed_text:
            self._line(now)

    def echo(self, message: str, file=None) -> None:
        """Print `message` on its own line (to `file`, defaults to the stream), keeping the bar below it.

        Use this instead of `print` for anything written to the terminal while
        the bar is drawn, stdout included, so that the two do not mix on one line.
        """
        file = file if file is not None else self.stream
        if self.enabled and self.tty and self._drawn:
            self._clear()
            print(message, file=file, flush=True)
            self._draw(self._clock())
        else:
            print(message, file=file, flush=True)

    def close(self) -> None:
        """Finish: print the step held back (lines) or leave the bar drawn and end its line (terminal)."""
        if not self.enabled or self._t0 is None:
            return
        now = self._clock()
        if self.tty:
            if self._drawn:
                self._draw(now)
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = 0
        elif self._text != self._printed_text:
            self._line(now)
        self._t0 = None
        self._printed_text = None
        self._last_write = None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- drawing -------------------------------------------------------------

    def _elapsed(self, now: float) -> str:
        s = int(now - self._t0)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"

    def _line(self, now: float) -> None:
        self.stream.write(f"[{self._fraction:4.0%} {self._elapsed(now):>5}] {self._text}\n")
        self.stream.flush()
        self._printed_text = self._text
        self._last_write = now

    def _draw(self, now: float) -> None:
        filled = int(round(self._fraction * _BAR_WIDTH))
        text = self._text + (f" ({self._detail})" if self._detail else "")
        line = f"[{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {self._fraction:4.0%}  {self._elapsed(now)}  {text}"
        width = max(shutil.get_terminal_size(fallback=(80, 24)).columns - 1, 20)
        if len(line) > width:
            line = line[:width - 1] + "…"
        pad = max(self._drawn - len(line), 0)  # blank out the end of a longer previous bar
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._drawn = len(line)
        self._last_write = now

    def _clear(self) -> None:
        self.stream.write("\r" + " " * self._drawn + "\r")
        self.stream.flush()
        self._drawn = 0


def reporter_for(args) -> ProgressReporter:
    """The reporter of a parsed command line: ``args.progress`` when the CLI made one, else a new one.

    Args:
        args: the `argparse.Namespace`; ``--quiet`` (``args.quiet``) turns it off.

    Returns:
        A `ProgressReporter` writing to stderr.
    """
    reporter = getattr(args, "progress", None)
    if reporter is None:
        reporter = ProgressReporter(enabled=not getattr(args, "quiet", False))
    return reporter
