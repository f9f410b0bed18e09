"""The command line as a user meets it: progress on stderr, no TensorFlow chatter, one JSON object."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tlviz import progress as progress_mod
from tlviz import quiet
from tlviz.progress import ProgressReporter

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_MODEL = ROOT / "sample_models" / "digits_base.keras"
SAMPLE_IMAGES = ROOT / "sample_models" / "digits_0_4"

# What TensorFlow, absl and Keras print when left alone.
TF_CHATTER = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuda|cpu_feature_guard|To enable the following"
                        r"|UserWarning|\d+/\d+ \S*━", re.M)
PROGRESS_LINE = re.compile(r"^\[\s*\d+%\s+\d+:\d\d\] \S", re.M)


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class _Terminal(io.StringIO):
    def isatty(self):
        return True


# -- the progress reporter ---------------------------------------------------------

def test_terminal_bar_is_redrawn_in_place_and_its_line_ended_on_close(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    term, clock = _Terminal(), _Clock()
    reporter = ProgressReporter(term, clock=clock)
    assert reporter.tty
    reporter(0.0, "Loading the model…")
    clock.t += 0.01
    reporter(0.3, "Loading the model…")  # same step, too soon: no redraw
    reporter(0.5, "Evaluating tf (2 of 4)…", "batch 3/9")  # a new step shows at once
    clock.t += 1
    reporter(0.75, "Evaluating tf (2 of 4)…", "batch 7/9")
    out = term.getvalue()
    assert out.count("\r") == 3 and "\n" not in out
    assert out.split("\r")[-1].startswith("[###############-----]  75%  0:01  Evaluating tf (2 of 4)… (batch 7/9)")
    reporter.echo("epoch 1 ...")  # a line printed meanwhile clears the bar and redraws it below
    assert re.search(r"\r +\repoch 1 \.\.\.\n\r\[#{15}-{5}\]  75%", term.getvalue())
    reporter.close()
    assert term.getvalue().endswith("\n") and term.getvalue().count("\n") == 2


def test_lines_one_per_step_throttled_detail_never_prints():
    stream, clock = io.StringIO(), _Clock()
    reporter = ProgressReporter(stream, clock=clock, line_every=1.0)
    assert not reporter.tty
    reporter(0.0, "Epoch 1 of 3", "batch 1/50")
    for b in range(2, 51):  # every batch: one line for the whole epoch
        clock.t += 0.1
        reporter(b / 150, "Epoch 1 of 3", f"batch {b}/50")
    reporter(1 / 3, "Epoch 2 of 3")
    clock.t += 0.2
    reporter(2 / 3, "Epoch 3 of 3")  # too soon after the last line: held back...
    clock.t += 0.2
    reporter(1.0, "Done.")  # ...and replaced by a newer step
    reporter.close()  # the held-back step is printed at the end
    lines = stream.getvalue().splitlines()
    assert lines == ["[  0%  0:00] Epoch 1 of 3", "[ 33%  0:04] Epoch 2 of 3", "[100%  0:05] Done."]


def test_disabled_reporter_writes_nothing():
    term = _Terminal()
    with ProgressReporter(term, enabled=False) as reporter:
        reporter(0.5, "Evaluating…")
        reporter.echo("still printed")
    assert term.getvalue() == "still printed\n"


# -- TensorFlow's start-up lines -------------------------------------------------------

STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796185468.737984    5406 port.cc:153] oneDNN custom operations are on. You may see slightly different \
numerical results due to floating-point round-off errors.
I0000 00:00:1796185468.738827    5406 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796185473.005093    5509 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available \
CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate flags.
E0000 00:00:1796185471.316818    5406 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call \
to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1796185471.316818    5406 some_op.cc:52] a real error
something else printed
"""


def test_filter_drops_startup_chatter_and_keeps_errors():
    kept = quiet.filter_tensorflow_chatter(STARTUP, min_level=2)
    assert kept == "E0000 00:00:1796185471.316818    5406 some_op.cc:52] a real error\nsomething else printed\n"
    everything = quiet.filter_tensorflow_chatter(STARTUP, min_level=0)  # TF_CPP_MIN_LOG_LEVEL=0: the user asked
    assert everything.count("\n") == STARTUP.count("\n") - 1  # only the absl notice goes


def test_import_capture_replays_real_errors(monkeypatch, capfd):
    def noisy_import_that_works():
        os.write(2, STARTUP.encode())

    monkeypatch.setattr(quiet, "_import_tensorflow", noisy_import_that_works)
    quiet._import_capturing_stderr()
    err = capfd.readouterr().err
    assert err.endswith("a real error\nsomething else printed\n") and "oneDNN" not in err

    def failing_import():
        os.write(2, b"I0000 00:00:1.5    1 loader.cc:1] loading\n")
        raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")

    monkeypatch.setattr(quiet, "_import_tensorflow", failing_import)
    with pytest.raises(ImportError, match="cannot open shared object"):
        quiet._import_capturing_stderr()
    assert "loader.cc:1] loading" in capfd.readouterr().err  # a failed import shows everything it printed


# -- the real command line, in a subprocess ---------------------------------------------

def _tlviz(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    return subprocess.run([sys.executable, "-m", "tlviz", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_json_run_prints_one_object_progress_and_no_tensorflow_lines():
    proc = _tlviz("normalize", SAMPLE_MODEL, SAMPLE_IMAGES, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["best"] == "tf"  # exactly one JSON object, nothing around it
    assert not TF_CHATTER.search(proc.stderr), proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(PROGRESS_LINE.match(line) for line in lines), proc.stderr  # not a tty: lines, no '\r'
    assert "Loading the model…" in lines[0] and lines[-1].endswith("Done.")


@pytest.mark.slow
def test_quiet_run_prints_nothing_on_stderr():
    proc = _tlviz("normalize", SAMPLE_MODEL, SAMPLE_IMAGES, "--no-variants", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "Best setting: tf" in proc.stdout


@pytest.mark.slow
def test_refused_input_still_says_why_and_exits_2(tmp_path):
    bad = tmp_path / "not_a_model.keras"
    bad.write_bytes(b"not a zip")
    proc = _tlviz("normalize", bad, SAMPLE_IMAGES)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "\nerror: " in "\n" + proc.stderr
    assert not TF_CHATTER.search(proc.stderr), proc.stderr


# -- fine-tuning progress: one line per epoch ------------------------------------------

@pytest.mark.slow
def test_finetune_progress_is_one_line_per_epoch(tmp_path, capsys, monkeypatch):
    from tlviz.cli import main

    monkeypatch.setattr(progress_mod, "LINE_EVERY_S", 0.0)  # every step, however fast the sample trains
    rc = main(["finetune", str(SAMPLE_MODEL), str(ROOT / "sample_models" / "digits_5_9"), "--unfreeze", "0",
               "--lr", "1e-3", "--epochs", "2", "--out", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert rc == 0 and json.loads(captured.out)["history"]
    lines = captured.err.splitlines()
    assert all(PROGRESS_LINE.match(line) for line in lines), captured.err
    epochs = [line.split("] ", 1)[1] for line in lines if "Epoch" in line]
    assert epochs == ["Epoch 1 of 2", "Epoch 2 of 2"]
    assert lines[-1].endswith("Done.") and "batch" not in captured.err


# -- honest when nothing works ---------------------------------------------------------

def test_normalize_text_says_no_setting_works_instead_of_a_best_one(monkeypatch, capsys):
    import dataclasses

    from tlviz.cli import main
    from tlviz.commands import normalize as command

    sentence = "No preprocessing makes digits_base better than chance on these 901 images."
    real = command.analyze

    def at_chance(*args, **kwargs):
        report = real(*args, **kwargs)
        return dataclasses.replace(report, inconclusive=sentence, best_preset=None, best_by=None, best_setting=None)

    monkeypatch.setattr(command, "analyze", at_chance)
    assert main(["normalize", str(SAMPLE_MODEL), str(SAMPLE_IMAGES), "--no-variants", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"NO BEST SETTING: {sentence}" in captured.out and "Best setting:" not in captured.out
    assert captured.err == ""
    assert main(["normalize", str(SAMPLE_MODEL), str(SAMPLE_IMAGES), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["inconclusive"] == sentence and f"note: {sentence}" in captured.err
