"""Controls, catastrophic forgetting, original-task retention and the duplicate-aware split, on the digits sample.

The planted fault is the classic one: the whole base unfrozen at a learning rate far too high for it
(Adam 0.1). Its clean counterpart is a head-only run at a sane rate. Runs are stored in a runs folder,
as the app and the command line store them, and judged from there.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tlviz.errors import CheckSkipped, RunRefused
from tlviz.finetune.config import RunConfig, control_config

warnings.filterwarnings("ignore", module="keras")

PLANTED = RunConfig(unfreeze=6, lr=1e-1, epochs=2, preset="tf", label="planted: whole base at Adam 0.1")
CLEAN = RunConfig(unfreeze=0, lr=1e-2, epochs=3, preset="tf", label="clean: head only")


@pytest.fixture(scope="module")
def images_5_9(loaded_base, digits_5_9):
    from tlviz.imagesets import load_image_set

    return load_image_set(digits_5_9, loaded_base.image_size, loaded_base.channels)


@pytest.fixture(scope="module")
def stored(loaded_base, images_5_9, base_images, tmp_path_factory):
    """The planted run with its head-only control, and the clean run with its random-init control, on disk."""
    from tlviz.contentkeys import pixels_key
    from tlviz.finetune.cache import ActivationCache
    from tlviz.finetune.run import run_finetune
    from tlviz.finetune.store import RunWriter, load_run

    root = tmp_path_factory.mktemp("runs")
    cache, key = ActivationCache(), pixels_key(images_5_9.images)
    results = {}

    def run(name, cfg, original=None):
        w = RunWriter(root / name)
        w.write_config(cfg, {"sha256": loaded_base.sha256, "filename": loaded_base.filename},
                       {"image_key": key, "source": images_5_9.source})
        res = run_finetune(loaded_base, images_5_9, cfg, writer=w, cache=cache, image_key=key, original=original,
                           save=False)
        w.status(res.state)
        results[name] = res
        return load_run(name, root)

    recs = {
        "planted": run("planted", PLANTED, original=base_images),
        "planted-head": run("planted-head", control_config(PLANTED, "head-only", "planted")),
        "clean": run("clean", CLEAN, original=base_images),
        "clean-random": run("clean-random", control_config(CLEAN, "random-init", "clean"), original=base_images),
    }
    return root, recs, results


# -- control configurations ------------------------------------------------------------------

def test_control_configs_keep_everything_but_what_they_control():
    rnd = control_config(PLANTED, "random-init", "r1")
    assert rnd.random_init and rnd.control_of == "r1" and rnd.unfreeze == 6 and rnd.lr == PLANTED.lr
    assert rnd.seed == PLANTED.seed and rnd.val_fraction == PLANTED.val_fraction and rnd.label.startswith("random")
    head = control_config(RunConfig(unfreeze=4, two_phase=True, lr=1e-4), "head-only")
    assert head.unfreeze == 0 and head.two_phase and head.lr == 1e-4 and not head.random_init
    with pytest.raises(RunRefused, match="already trains only the head"):
        control_config(CLEAN, "head-only")
    with pytest.raises(RunRefused, match="itself a control"):
        control_config(rnd, "head-only")
    with pytest.raises(RunRefused, match="Unknown control"):
        control_config(CLEAN, "imagenet")
    with pytest.raises(RunRefused, match="unfreeze must be 0"):
        RunConfig(unfreeze=3, control="head-only")
    assert RunConfig.from_dict(rnd.to_dict()) == rnd


def test_a_random_init_control_starts_from_seeded_random_weights_and_leaves_the_model_alone(loaded_base):
    from tlviz.finetune.build import random_clone

    before = [w.copy() for w in loaded_base.model.get_weights()]
    a, b, c = random_clone(loaded_base.model, 0), random_clone(loaded_base.model, 0), random_clone(loaded_base.model, 1)
    conv = lambda m: m.get_layer("block1_conv").get_weights()[0]  # noqa: E731
    np.testing.assert_array_equal(conv(a), conv(b))
    assert not np.allclose(conv(a), conv(c))
    assert not np.allclose(conv(a), loaded_base.model.get_layer("block1_conv").get_weights()[0])
    bn = a.get_layer("block1_bn")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)  # statistics start fresh too
    for w0, w1 in zip(before, loaded_base.model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


# -- the comparison --------------------------------------------------------------------------

def test_the_controls_are_scored_on_the_same_validation_images_with_an_interval(stored):
    from tlviz.finetune.controls import compare, controls_of

    root, recs, _ = stored
    assert [r.run_id for r in controls_of("clean", recs.values())] == ["clean-random"]
    cmp_random = compare(recs["clean"], recs["clean-random"])
    d = cmp_random.difference
    assert d.n == len(recs["clean"].outcome.val_indices) > 100
    assert d.accuracy_a == pytest.approx(recs["clean"].outcome.val_accuracy)
    assert d.accuracy_b == pytest.approx(recs["clean-random"].outcome.val_accuracy)
    assert cmp_random.verdict == "better" and d.low > 0  # pre-trained features beat random ones on the digits
    assert "pre-trained weights help" in cmp_random.sentence() and "95 % interval" in cmp_random.sentence()
    cmp_head = compare(recs["planted"], recs["planted-head"])
    assert cmp_head.verdict == "worse" and "Unfreezing hurts" in cmp_head.sentence()
    out = cmp_head.to_dict()
    assert out["val_accuracy"] == recs["planted-head"].outcome.val_accuracy and out["n_images"] == d.n


# -- catastrophic-forgetting -----------------------------------------------------------------------

def test_catastrophic_forgetting_fires_on_the_planted_run(stored):
    from tlviz.diagnose.forgetting import judge_run, judge_runs

    root, recs, results = stored
    j = judge_run(recs["planted"], [recs["planted-head"]])
    assert j.fires is True
    f = j.finding
    assert f.id == "catastrophic-forgetting" and f.severity == "warning" and f.area == "finetuning"
    cka = f.evidence["cka_per_unfrozen_block"]
    assert set(cka) == {"block1", "block2", "block3"} and min(cka.values()) < 0.5
    assert cka == pytest.approx({d["block"]: d["cka"] for d in results["planted"].drift}, abs=1e-6)
    control = f.evidence["controls"][0]
    assert control["kind"] == "head-only"
    assert control["val_accuracy"] == pytest.approx(recs["planted-head"].outcome.val_accuracy, abs=1e-6)
    assert control["high"] < 0  # the run is clearly worse than the head alone
    assert "fewer" in f.fix and "lower" in f.fix and "two phases" in f.fix
    findings, judged = judge_runs(list(recs.values()))
    assert [x.id for x in findings] == ["catastrophic-forgetting"] and findings[0].evidence["run_id"] == "planted"
    assert {x.run_id: x.fires for x in judged} == {"planted": True, "clean": False}


def test_catastrophic_forgetting_stays_quiet_on_the_clean_run_and_skips_without_a_control(stored):
    from tlviz.diagnose.forgetting import judge_run, judge_runs

    root, recs, _ = stored
    clean = judge_run(recs["clean"], [recs["clean-random"]])
    assert clean.fires is False and "frozen" in clean.reason
    assert judge_runs([recs["clean"], recs["clean-random"]])[0] == []
    undecided = judge_run(recs["planted"], [])
    assert undecided.fires is None and "needs a control" in undecided.reason
    with pytest.raises(CheckSkipped, match="needs a control"):
        judge_runs([recs["planted"]])
    with pytest.raises(CheckSkipped, match="No finished run"):
        judge_runs([])


def test_the_diagnose_report_includes_the_verdict_when_runs_exist(stored, loaded_base, images_5_9):
    from tlviz.diagnose import diagnose
    from tlviz.diagnose.forgetting import runs_for, with_cli_runs, with_runs
    from tlviz.contentkeys import pixels_key

    root, recs, _ = stored
    report = diagnose(loaded_base, images_5_9, "tf", checks=["catastrophic-forgetting", "class-imbalance"])
    assert [s.id for s in report.skipped] == ["catastrophic-forgetting"]  # a model file alone has no runs
    assert "judges fine-tuning runs" in report.skipped[0].reason
    found = runs_for(loaded_base.sha256, pixels_key(images_5_9.images), None, root)
    assert {r.run_id for r in found} == set(recs)
    assert runs_for(loaded_base.sha256, "other images", None, root) == []
    assert with_cli_runs(report, loaded_base, images_5_9, root / "no such folder") is report
    assert not (root / "no such folder").exists()  # nothing created
    judged = with_runs(report, found)
    assert [f.id for f in judged.findings] == ["catastrophic-forgetting"] and not judged.skipped
    assert "catastrophic-forgetting" in judged.checks_run
    assert "catastrophic-forgetting" in judged.to_markdown()
    assert json.loads(json.dumps(judged.to_dict()))["findings"][0]["evidence"]["run_id"] == "planted"
    assert [f.id for f in report.findings] == []  # the stored report itself is not changed


# -- original-task retention ------------------------------------------------------------------------

def test_retention_reports_how_much_of_the_original_task_survives(stored, base_images):
    root, recs, results = stored
    head = results["clean"].retention
    assert head["before"] == head["after"] and head["difference"] == 0  # a frozen base keeps its task exactly
    assert head["n_images"] == len(base_images) and head["classes"] == base_images.class_names
    planted = recs["planted"].outcome.retention  # as stored in metrics.json
    assert planted["before"] > 0.9 and planted["after"] < planted["before"] - 0.3
    assert planted["low"] <= planted["difference"] <= planted["high"] < 0
    assert planted["retained"] == pytest.approx(planted["after"] / planted["before"])
    assert results["clean-random"].retention is None  # a random start never held the original task
    assert any("not measured for a random-init control" in n for n in results["clean-random"].notes)


def test_an_image_set_of_other_classes_cannot_serve_as_the_original_task(loaded_base, images_5_9, base_images):
    from tlviz.finetune.retention import original_labels
    from tlviz.finetune.run import run_finetune

    assert list(original_labels(loaded_base, base_images)) == list(base_images.labels)
    with pytest.raises(RunRefused, match="does not match the model's outputs") as exc:
        original_labels(loaded_base, images_5_9)
    assert "0, 1, 2, 3, 4" in str(exc.value)
    small = type(base_images)(images=base_images.images[:, :16, :16], labels=base_images.labels,
                              class_names=base_images.class_names, files=base_images.files)
    with pytest.raises(RunRefused, match="Decode them at the model's input size"):
        original_labels(loaded_base, small)
    res = run_finetune(loaded_base, images_5_9, RunConfig(epochs=1, preset="tf"), original=images_5_9)
    assert res.retention is None and any("retention not measured" in n for n in res.notes)


# -- duplicates stay on one side ---------------------------------------------------------------------

def _planted_copies(images):
    """The image set with copies planted: exact copies, slightly noisy copies (within a class) and one filed under
    another class. Returns the new set and the groups of indices that are copies of one another."""
    rng = np.random.default_rng(7)
    px, labels, files = images.images, np.asarray(images.labels), list(images.files)
    picks = rng.choice(len(px), 24, replace=False)
    extra, extra_labels, groups = [], [], []
    for k, i in enumerate(picks):
        copy = px[i].astype(np.int16)
        if k % 2:  # a near copy: a little noise, as re-encoding leaves
            copy = copy + rng.integers(-1, 2, copy.shape)
        extra.append(np.clip(copy, 0, 255).astype(np.uint8))
        other = (labels[i] + 1) % len(images.class_names) if k == 0 else labels[i]
        extra_labels.append(other)
        groups.append((int(i), len(px) + k))
    new = type(images)(images=np.concatenate([px, np.stack(extra)]), labels=np.concatenate([labels, extra_labels]),
                       class_names=images.class_names, files=files + [f"copy_{k}.png" for k in range(len(extra))],
                       source="planted copies")
    return new, groups


def test_a_planted_copy_never_lands_on_both_sides_of_the_split(images_5_9):
    from tlviz.duplicates import duplicate_group_ids
    from tlviz.finetune.split import stratified_split

    planted, pairs = _planted_copies(images_5_9)
    ids = duplicate_group_ids(planted.images)
    assert all(ids[a] == ids[b] for a, b in pairs)  # the detector finds every planted copy
    split_apart_without = 0
    for seed in range(20):
        train, val = stratified_split(planted.labels, 0.2, seed, ids)
        side = np.zeros(len(planted), int)
        side[val] = 1
        assert all(side[a] == side[b] for a, b in pairs), seed
        assert len(train) + len(val) == len(planted) and not set(train) & set(val)
        per_class = np.bincount(planted.labels[val], minlength=5) / np.bincount(planted.labels, minlength=5)
        assert np.all(np.abs(per_class - 0.2) < 0.05)  # still stratified
        tr0, va0 = stratified_split(planted.labels, 0.2, seed)
        side0 = np.zeros(len(planted), int)
        side0[va0] = 1
        split_apart_without += sum(side0[a] != side0[b] for a, b in pairs)
    assert split_apart_without > 20  # without the groups a random split separates copies all the time


def test_a_run_keeps_the_planted_copies_on_one_side_and_says_so(loaded_base, images_5_9):
    from tlviz.finetune.run import run_finetune

    planted, pairs = _planted_copies(images_5_9)
    res = run_finetune(loaded_base, planted, RunConfig(epochs=1, preset="tf"))
    val = set(res.val_indices.tolist())
    assert all((a in val) == (b in val) for a, b in pairs)
    assert res.duplicates == {"groups": 24, "images": 48}
    assert any("kept on one side" in n for n in res.notes)


# -- the command line -------------------------------------------------------------------------------------

def test_finetune_json_has_the_drift_and_the_random_init_control(tmp_path, capsys):
    from tlviz.cli import main
    from tlviz.finetune.store import list_runs

    rc = main(["finetune", "--quiet", "sample_models/digits_base.keras", "sample_models/digits_5_9", "--unfreeze", "0", "--lr",
               "1e-2", "--epochs", "1", "--preset", "tf", "--control", "random-init", "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["representation_drift"] == [{"block": "block1", "cka": 1.0}, {"block": "block2", "cka": 1.0},
                                           {"block": "block3", "cka": 1.0}]
    control = out["control"]
    assert set(control) >= {"val_accuracy", "val_loss"} and control["kind"] == "random-init"
    assert control["low"] <= control["difference"] <= control["high"]
    runs = list_runs(tmp_path)
    assert sorted(runs["control"].fillna("-")) == ["-", "random-init"]
    main_id = runs.loc[runs["control"].isna(), "run_id"].iloc[0]
    assert runs.loc[runs["control"] == "random-init", "control_of"].iloc[0] == main_id
    assert control["run_id"] == runs.loc[runs["control"] == "random-init", "run_id"].iloc[0]


def test_finetune_refuses_a_head_only_control_of_a_head_only_run_and_a_wrong_original_set(tmp_path, capsys):
    from tlviz.cli import main

    args = ["finetune", "sample_models/digits_base.keras", "sample_models/digits_5_9", "--unfreeze", "0", "--lr",
            "1e-2", "--epochs", "1", "--preset", "tf", "--out", str(tmp_path)]
    assert main(args + ["--control", "head-only"]) != 0
    assert "already trains only the head" in capsys.readouterr().err
    assert main(args + ["--original-images", "sample_models/digits_5_9"]) != 0
    assert "does not match the model's outputs" in capsys.readouterr().err
    assert not any(p.is_dir() and not p.name.startswith(".") for p in tmp_path.iterdir())  # nothing was started


# -- the app's worker --------------------------------------------------------------------------------------

def test_a_worker_job_queues_the_linked_control_and_reports_drift_and_retention(runs, loaded_base, images_5_9,
                                                                                 base_images):
    from tlviz.diagnose.forgetting import runs_for
    from tlviz.contentkeys import pixels_key
    from tlviz.jobs import start_job, wait

    with pytest.raises(RunRefused, match="already trains only the head"):
        start_job(loaded_base, images_5_9, [CLEAN], controls=["head-only"], owner="ws")
    with pytest.raises(RunRefused, match="does not match the model's outputs"):
        start_job(loaded_base, images_5_9, [CLEAN], original=images_5_9, owner="ws")
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]  # nothing created
    cfg = RunConfig(unfreeze=2, lr=1e-3, epochs=1, preset="tf")
    job = start_job(loaded_base, images_5_9, [cfg], controls=["head-only"], original=base_images, owner="ws")
    st = wait(job.job_id, timeout=300)
    assert st.state == "done", st.message
    run, control = st.runs
    assert (control.control, control.control_of, control.config["unfreeze"]) == ("head-only", run.run_id, 0)
    assert run.original["source"] == base_images.source and run.original["n"] == len(base_images)
    drift = {d["block"]: d for d in run.outcome.drift}
    assert drift["block1"]["cka"] == 1.0 and drift["block3"]["trained"] and drift["block3"]["cka"] < 1.0
    assert run.outcome.retention["n_images"] == len(base_images)
    assert control.outcome.retention["difference"] == 0  # the head-only control keeps the base
    found = runs_for(loaded_base.sha256, pixels_key(images_5_9.images), "ws")
    assert {r.run_id for r in found} == {run.run_id, control.run_id}
    assert runs_for(loaded_base.sha256, pixels_key(images_5_9.images), "another workspace") == []


def test_diagnose_json_names_catastrophic_forgetting_for_the_command_lines_runs(tmp_path, capsys):
    from tlviz.cli import main

    common = ["sample_models/digits_base.keras", "sample_models/digits_0_4"]
    assert main(["finetune", "--quiet", *common, "--unfreeze", "6", "--lr", "0.1", "--epochs", "1", "--preset", "tf",
                 "--control", "head-only", "--out", str(tmp_path), "--json"]) == 1  # it diverges: an error, exit 1
    ran = json.loads(capsys.readouterr().out)
    assert "catastrophic-forgetting" in [f["id"] for f in ran["findings"]] and ran["control"]["kind"] == "head-only"
    main(["diagnose", "--quiet", *common, "--preset", "tf", "--runs", str(tmp_path), "--json"])
    found = json.loads(capsys.readouterr().out)["findings"]
    forgetting = [f for f in found if f["id"] == "catastrophic-forgetting"]
    assert len(forgetting) == 1 and forgetting[0]["evidence"]["run_id"] == ran["model_path"].split("/")[-2]

