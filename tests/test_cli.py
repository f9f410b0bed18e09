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
    proc = _tlviz("normalize", SAMPLE_MODEL, SAMPLE_IMAGES, "--json", "--inference-preset", "tf")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["best"] == "tf"  # exactly one JSON object, nothing around it
    assert not TF_CHATTER.search(proc.stderr), proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(PROGRESS_LINE.match(line) for line in lines), proc.stderr  # not a tty: lines, no '\r'
    assert "Loading the model…" in lines[0] and lines[-1].endswith("Done.")


@pytest.mark.slow
def test_quiet_run_prints_nothing_on_stderr():
    proc = _tlviz("normalize", SAMPLE_MODEL, SAMPLE_IMAGES, "--no-variants", "--quiet", "--inference-preset", "tf")
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


# -- one exit-status contract for every command (issue 22) ---------------------------------------------

FROZEN_MODEL = ROOT / "sample_models" / "digits_frozen.keras"
OTHER_IMAGES = ROOT / "sample_models" / "digits_5_9"
LEARNS = ["--unfreeze", "0", "--lr", "1e-2", "--epochs", "2", "--batch-size", "64", "--preset", "tf"]

# (case, arguments, exit status). {model}: the sample model, {frozen}: its frozen copy, {images}: digits 0-4 (the
# model's own task), {other}: digits 5-9, {tmp}: a fresh folder. A case with --json is judged on its JSON.
EXIT_CASES = [
    ("layers: trainable model", ["layers", "{model}", "--json"], 0),
    ("layers: nothing trainable", ["layers", "{frozen}"], 1),
    ("layers: frozen, json", ["layers", "{frozen}", "--json"], 1),
    ("layers: not a model", ["layers", "{tmp}/bad.keras"], 2),
    ("normalize: the preset the model expects", ["normalize", "{model}", "{images}", "--inference-preset", "tf",
                                                 "--json"], 0),
    ("normalize: a preset that costs accuracy", ["normalize", "{model}", "{images}", "--no-variants"], 1),
    ("normalize: same, json", ["normalize", "{model}", "{images}", "--json"], 1),
    ("normalize: no such images", ["normalize", "{model}", "{tmp}/none"], 2),
    ("diagnose: the right preset", ["diagnose", "{model}", "{images}", "--preset", "tf", "--json"], 0),
    ("diagnose: the wrong preset", ["diagnose", "{model}", "{images}", "--preset", "unit"], 1),
    ("diagnose: not a model", ["diagnose", "{tmp}/bad.keras", "{images}"], 2),
    ("finetune: learns", ["finetune", "{model}", "{other}", *LEARNS, "--out", "{tmp}", "--json"], 0),
    ("finetune: no learning", ["finetune", "{model}", "{other}", "--unfreeze", "0", "--lr", "1e-7", "--epochs", "1",
                               "--preset", "tf", "--out", "{tmp}"], 1),
    ("finetune: no learning, json", ["finetune", "{model}", "{other}", "--unfreeze", "0", "--lr", "1e-7", "--epochs",
                                     "1", "--preset", "tf", "--out", "{tmp}", "--json"], 1),
    ("finetune: diverged", ["finetune", "{model}", "{other}", "--unfreeze", "6", "--lr", "1", "--epochs", "2",
                            "--out", "{tmp}", "--json"], 1),
    ("finetune: frozen model", ["finetune", "{frozen}", "{other}", *LEARNS, "--out", "{tmp}"], 2),
    ("finetune: weight decay out of range", ["finetune", "{model}", "{other}", *LEARNS, "--weight-decay", "2",
                                             "--out", "{tmp}"], 2),
    ("finetune: momentum with adam", ["finetune", "{model}", "{other}", *LEARNS, "--momentum", "0.5",
                                      "--out", "{tmp}"], 2),
    ("repair: proven on held-out images", ["repair", "{model}", "{images}", "--fix", "normalization-mismatch", "--out",
                                           "{tmp}/fixed.keras", "--json"], 0),
    ("repair: unknown repair", ["repair", "{model}", "{images}", "--fix", "nope", "--out", "{tmp}/fixed.keras"], 2),
    ("convert", ["convert", "{model}", "{tmp}/copy.keras", "--json"], 0),
    ("convert: not a .keras name", ["convert", "{model}", "{tmp}/copy.h5"], 2),
]


def _run_cli(argv, capsys) -> tuple[int, str, str]:
    from tlviz.cli import main

    rc = main([*argv, "--quiet"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _said_at_error_level(command: str, out: str) -> bool:
    """Whether the text output reports an error-level finding."""
    if command == "diagnose":  # a Markdown report: "**1 error, 2 warnings, ...**"
        return re.search(r"^\*\*[1-9]\d* errors?\b", out, re.M) is not None
    return re.search(r"^ERROR: \S", out, re.M) is not None


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [c[1:] for c in EXIT_CASES], ids=[c[0] for c in EXIT_CASES])
def test_every_command_follows_one_exit_status_contract(argv, expected, tmp_path, capsys):
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    argv = [a.format(model=SAMPLE_MODEL, frozen=FROZEN_MODEL, images=SAMPLE_IMAGES, other=OTHER_IMAGES, tmp=tmp_path)
            for a in argv]
    rc, out, err = _run_cli(argv, capsys)
    assert rc == expected, err[-3000:]
    if rc == 2:  # refused: the reason on stderr, nothing on stdout, no run folder
        assert out == "" and re.search(r"^error: \S", err, re.M), err
        assert not [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return
    if "--json" in argv:
        obj = json.loads(out)  # exactly one object
        errors = [f["id"] for f in obj.get("findings", []) if f["severity"] == "error"]
        assert bool(errors) == (rc == 1), obj.get("findings")
        assert all(set(f) == {"id", "severity", "area", "title", "evidence", "fix"} for f in obj.get("findings", []))
    else:
        assert _said_at_error_level(argv[0], out) == (rc == 1), out


@pytest.mark.parametrize("argv, allowed", [
    (["finetune", "{model}", "{other}", *LEARNS, "--optimizer", "rmsprop"], "choose from adam, sgd"),
    (["finetune", "{model}", "{other}", *LEARNS, "--bn", "unfrozen"], "choose from frozen, train"),
    (["finetune", "{model}", "{other}", *LEARNS, "--preset", "imagenet"], "choose from raw, unit"),
    (["finetune", "{model}", "{other}", *LEARNS, "--weight-decay", "lots"], "invalid float value"),
    (["finetune", "{model}", "{other}", "--unfreeze", "0", "--lr", "1e-3", "--epochs", "2.5"], "invalid int value"),
    (["normalize", "{model}", "{images}", "--inference-preset", "imagenet"], "choose from raw, unit"),
])
def test_unknown_option_values_exit_2_naming_the_allowed_ones(argv, allowed, capsys):
    from tlviz.cli import main

    argv = [a.format(model=SAMPLE_MODEL, images=SAMPLE_IMAGES, other=OTHER_IMAGES) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out == ""
    assert allowed in captured.err.replace("'", ""), captured.err


@pytest.mark.parametrize("flags, message", [
    (["--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    (["--head-epochs", "3"], "--head-epochs sets the head phase of a two-phase run"),
    (["--head-lr", "1e-4"], "--head-lr sets the head phase of a two-phase run"),
    (["--no-new-head", "--head-dropout", "0.5"], "--head-dropout sets the dropout of a new head"),
    (["--val-fraction", "0.9"], "val_fraction must be between 0.05 and 0.5"),
    (["--optimizer", "sgd", "--momentum", "1"], "momentum must be in [0.0, 1.0)"),
])
def test_finetune_refuses_flags_that_would_be_ignored_or_are_out_of_range(flags, message, tmp_path, capsys):
    rc, out, err = _run_cli(["finetune", str(SAMPLE_MODEL), str(OTHER_IMAGES), *LEARNS, *flags, "--out",
                             str(tmp_path)], capsys)
    assert rc == 2 and out == "" and message in err, err
    assert not list(tmp_path.iterdir())  # nothing started


def test_a_closed_stdout_ends_the_command_quietly():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.Popen([sys.executable, "-m", "tlviz", "layers", str(SAMPLE_MODEL), "--json"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader goes away before anything is written (`tlviz ... | true`)
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141
    assert "Traceback" not in err and "internal error" not in err, err


# -- fine-tuning: the page's run options as flags, where it ran, what moved (issue 22) -----------------

@pytest.mark.slow
def test_finetune_flags_reach_the_run(tmp_path, capsys):
    from tlviz.finetune.store import load_run

    flags = ["--unfreeze", "2", "--lr", "1e-2", "--epochs", "1", "--preset", "tf", "--optimizer", "sgd", "--momentum",
             "0.8", "--new-head", "--head-dropout", "0.3", "--two-phase", "--head-epochs", "1", "--head-lr", "2e-3",
             "--bn", "train", "--weight-decay", "1e-4", "--no-cache", "--val-fraction", "0.25", "--seed", "3",
             "--label", "from the CLI"]
    rc, out, err = _run_cli(["finetune", str(SAMPLE_MODEL), str(OTHER_IMAGES), *flags, "--out", str(tmp_path),
                             "--json"], capsys)
    assert rc in (0, 1), err[-3000:]
    obj = json.loads(out)
    expected = {"unfreeze": 2, "lr": 1e-2, "epochs": 1, "preset": "tf", "optimizer": "sgd", "momentum": 0.8,
                "new_head": True, "head_dropout": 0.3, "two_phase": True, "head_epochs": 1, "head_lr": 2e-3,
                "bn": "train", "weight_decay": 1e-4, "use_cache": False, "augment": False, "val_fraction": 0.25,
                "seed": 3, "label": "from the CLI"}
    assert {k: obj["config"][k] for k in expected} == expected
    assert load_run(obj["run_id"], tmp_path).config == obj["config"]  # what the run stored
    # ...and what the run did with them: two phases, no cache, a new head, BatchNormalization trained.
    assert len(obj["history"]) == 2 and obj["cache_used"] is False and obj["new_head"] is True
    moved = {w["path"]: w for w in obj["weight_change"]}
    assert moved["block3_bn"]["trainable"] and moved["block3_bn"]["rel_change"] > 0  # --bn train
    assert moved["block1_bn"]["rel_change"] == 0 and not moved["block1_bn"]["trainable"]  # below the depth

    rc, out, err = _run_cli(["finetune", str(SAMPLE_MODEL), str(OTHER_IMAGES), *LEARNS, "--augment", "--no-new-head",
                             "--out", str(tmp_path / "text")], capsys)
    assert rc in (0, 1), err[-3000:]
    run_dir = Path(re.search(r"^Run folder: (.+)$", out, re.M).group(1))
    rec = load_run(run_dir.name, run_dir.parent)
    assert rec.config["augment"] is True and rec.config["new_head"] is False and rec.metrics["new_head"] is False
    assert rec.metrics["cache_used"] is False  # augmentation changes the images every epoch
    line = re.search(r"^run: (.+)$", out, re.M).group(1)
    assert "augment" in line and "new head" not in line and "Adam 1e-02" in line


@pytest.mark.slow
def test_finetune_json_says_where_it_ran_and_what_moved_by_role(tmp_path, capsys):
    import socket

    from tlviz.finetune.store import describe_where
    from tlviz.finetune.store import load_run
    from tlviz.layers import layer_table
    from tlviz.models import load_model

    common = ["finetune", str(SAMPLE_MODEL), str(OTHER_IMAGES), "--unfreeze", "2", "--lr", "1e-2", "--epochs", "2",
              "--preset", "tf"]
    rc, out, err = _run_cli([*common, "--out", str(tmp_path), "--json"], capsys)
    assert rc == 0, err[-3000:]
    obj = json.loads(out)
    rec = load_run(obj["run_id"], tmp_path)
    ex = obj["executor"]
    assert ex["kind"] == "local" and ex["node"] == socket.gethostname() and ex["device"] in ("CPU", "GPU")
    assert ex["description"] == describe_where(rec.where) == rec.ran_on and ex["description"].startswith("local · ")
    assert obj["cache_used"] is True and obj["config"]["use_cache"] is True  # the default

    table = layer_table(load_model(obj["model_path"]).model)
    roles = dict(zip(table["path"], table["role"]))
    weights = obj["weight_change"]
    stored = rec.weight_change
    assert [w["path"] for w in weights] == list(stored["path"])  # the report the page shows, in model order
    assert [w["rel_change"] for w in weights] == pytest.approx(list(stored["rel_change"]))
    assert all(w["role"] == roles[w["path"]] for w in weights)
    by_role = {role: [w for w in weights if w["role"] == role] for role in ("base", "head")}
    assert by_role["head"] and all(w["trainable"] and w["rel_change"] > 0 for w in by_role["head"])
    trained_base = [w["path"] for w in by_role["base"] if w["trainable"]]
    # The top two weight-holding layers of the base are block3_bn and block3_conv; BatchNormalization stays frozen
    # (--bn frozen, the default), so only the convolution trains.
    assert trained_base == ["block3_conv"]
    assert all(w["rel_change"] == 0 for w in by_role["base"] if not w["trainable"])  # frozen: exactly unchanged

    # The text says the same: where, what moved, the same verdict, the same exit status.
    rc_text, text, _ = _run_cli([*common, "--out", str(tmp_path / "text")], capsys)
    assert rc_text == rc == 0
    assert f"ran on: {ex['description']}" in text
    n_moved = sum(1 for w in weights if w["rel_change"] > 0)
    n_frozen = sum(1 for w in weights if not w["trainable"])
    assert f"weight change: {n_moved} of {len(weights)} layers moved" in text
    assert f"{n_frozen} of {n_frozen} frozen layers exactly unchanged" in text
    assert not re.search(r"^ERROR: ", text, re.M)


@pytest.mark.slow
def test_a_run_that_does_not_learn_says_so_at_error_level_in_text_and_json(tmp_path, capsys):
    args = ["finetune", str(SAMPLE_MODEL), str(OTHER_IMAGES), "--unfreeze", "0", "--lr", "1e-7", "--epochs", "1",
            "--preset", "tf"]
    rc_text, text, _ = _run_cli([*args, "--out", str(tmp_path / "a")], capsys)
    rc_json, out, _ = _run_cli([*args, "--out", str(tmp_path / "b"), "--json"], capsys)
    obj = json.loads(out)
    no_learning = [f for f in obj["findings"] if f["id"] == "no-learning"]
    assert rc_text == rc_json == 1
    assert no_learning and no_learning[0]["severity"] == "error"
    assert re.search(r"^ERROR: No learning: validation accuracy stays at chance", text, re.M)
    assert obj["state"] == "completed" and re.search(r"^COMPLETED: ", text, re.M)


# -- layers: each layer's role; repair: the verdict on the copy ------------------------------------------

def test_layers_json_carries_each_layers_role_as_the_table_does(capsys):
    from tlviz.layers import layer_table
    from tlviz.models import load_model

    rc, out, _ = _run_cli(["layers", str(SAMPLE_MODEL), "--json"], capsys)
    obj = json.loads(out)
    table = layer_table(load_model(SAMPLE_MODEL).model)
    assert rc == 0 and obj["findings"] == []
    assert [(r["path"], r["role"]) for r in obj["layers"]] == list(zip(table["path"], table["role"]))
    roles = [r["role"] for r in obj["layers"]]
    assert roles[0] == "base" and obj["layers"][-1]["path"] == "predictions" and roles[-1] == "head"
    order = ("input", "base", "head")
    assert roles == sorted(roles, key=order.index)  # input layers, then the base, then the head
    rc, text, _ = _run_cli(["layers", str(SAMPLE_MODEL)], capsys)
    assert rc == 0 and re.search(r"^predictions\s+Dense .* head$", text, re.M)


@pytest.mark.slow
def test_repair_reports_an_unproven_copy_as_a_warning_and_a_worse_one_as_an_error(tmp_path, capsys):
    import dataclasses
    import shutil

    from tlviz.commands import exit_status
    from tlviz.commands.repair import repair_findings
    from tlviz.imagesets import load_image_set
    from tlviz.models import load_model
    from tlviz.repair import repair

    few = tmp_path / "few"  # 10 images a class: too few held-out images to prove anything on a healthy model
    for c in sorted(p for p in SAMPLE_IMAGES.iterdir() if p.is_dir()):
        (few / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[:10]:
            shutil.copy(f, few / c.name / f.name)
    rc, out, err = _run_cli(["repair", str(SAMPLE_MODEL), str(few), "--fix", "bn-statistics-mismatch", "--preset",
                             "tf", "--out", str(tmp_path / "fixed.keras"), "--json"], capsys)
    obj = json.loads(out)
    assert rc == 0, err
    assert [(f["id"], f["severity"]) for f in obj["findings"]] == [("repair-unproven", "warning")]
    low, high = obj["overall"]["interval"]
    assert low <= 0 <= high

    loaded = load_model(SAMPLE_MODEL)
    result = repair(loaded, load_image_set(few, loaded.image_size, loaded.channels), ["bn-statistics-mismatch"], "tf")
    assert [f.id for f in repair_findings(result)] == ["repair-unproven"]
    worse = dataclasses.replace(result, overall={**result.overall, "after": 0.5, "interval": [-0.7, -0.3]})
    found = repair_findings(worse)
    assert [(f.id, f.severity) for f in found] == [("repair-worse", "error")] and exit_status(found) == 1
    assert "Keep the original model" in found[0].fix


def test_readme_command_line_section_names_every_finetune_flag_and_exit_status():
    from tlviz.cli import build_parser

    section = (ROOT / "docs" / "command-line.md").read_text(encoding="utf-8")
    parser, _ = build_parser()
    finetune = parser._subparsers._group_actions[0].choices["finetune"]
    flags = {s for a in finetune._actions for s in a.option_strings if s.startswith("--")} - {"--help", "--quiet"}
    assert flags and not [f for f in sorted(flags) if f"`{f}" not in section]
    for status in (0, 1, 2, 3):
        assert re.search(rf"^\| {status} \| \S", section, re.M)
