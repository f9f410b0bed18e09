"""Diagnose: every check the engine has, on one model and one image set.

Users come with a symptom ("it doesn't learn", "it works in training but not
in production"), not a hypothesis. `diagnose` runs every check below and
answers with **findings** (`tlviz.findings.Finding`): most severe first,
grouped by the three areas of DESIGN.md, each with its evidence measured on
the user's own model and images, and a fix.

Checks (stable id — severity, area — fires when), listed from the registry
(`tlviz.diagnose.registry.CHECKS`, the only place they are written):

{checks}

Every model pass runs compiled, in batches planned from ``TLVIZ_MEMORY_MB`` and
the model's activation sizes (`tlviz.memory`); the probe uses a seeded,
class-balanced sample of at most `PROBE_MAX_IMAGES` images, the training-mode
checks one of at most `TRAINING_MODE_IMAGES`.

The loaded model is never changed: checks that run it in training mode work on
a clone (`keras.models.clone_model` + `set_weights`). Checks that need labels
are *skipped with a sentence* (a `SkippedCheck` in the report) when the image
set is unlabelled or its classes do not match the model's outputs.

Modules
-------

From the bottom up (a module imports only modules of its own item or of the items above it):

- `base`: `Check` (a registry entry), `Threshold`, `SkippedCheck` and the evidence helpers;
  `thresholds`: every check's thresholds by check id (`THRESHOLDS`, `threshold`).
- `assignment`, `clones`, `probe`, `outoffold`: measurements; `context`: `DiagnosisContext`
  (the measurements several checks share) and `PresetEvidence`.
- `pretraining`, `finetuning`, `inference`: the checks, by area; `trainingmode` (bn-statistics-mismatch,
  training-mode-inference), `outputs` (prediction-collapse, output-loss-mismatch), `data` (exif-orientation,
  duplicate-images, likely-mislabelled, with the out-of-fold probe `outoffold.out_of_fold`) and
  `runverdict` (catastrophic-forgetting): checks by topic.
- `registry`: `CHECKS`, one `Check` per check; renders the table of docs/diagnose.md (``python -m tlviz.diagnose``).
- `report`: `DiagnosisReport` and its Markdown / JSON exports; `runner`: `diagnose`; `forgetting`:
  fine-tuning runs judged with the registry's entry into a report.

Public API
----------

- `diagnose(loaded_model, image_set, inference_preset="unit", progress=None,
  source=None, *, checks=None, normalization=None) -> DiagnosisReport`.
- `DiagnosisReport`: ``findings`` (sorted), ``skipped``, ``checks_run``,
  context fields, ``normalization`` (the `tlviz.normalize.NormalizationReport`
  it used, or None); ``by_area()``, ``counts_by_severity``, ``has_errors``, ``exit_code``,
  ``for_preset(preset)`` (re-judge the preset-dependent checks without running
  the model again), ``to_json()`` (the CLI object ``{"findings": [...]}``),
  ``to_dict()`` (the whole report), ``to_markdown()``.
- `SkippedCheck(id, title, reason)`.
- `CHECKS` (ordered `Check` registry), `CHECK_IDS`, `AREA_TITLES`, `SEVERITY_TITLES`.
- `DiagnosisContext`; each check is ``check_<id>(ctx, check) -> list[Finding]``
  (or a ``judge_<id>(evidence, preset, check)``) and raises `CheckSkipped` with
  a sentence when it cannot run.
- `best_assignment(confusion) -> ndarray`: the class permutation that explains
  a confusion matrix best (SciPy's Hungarian solver when installed, an exact
  search for up to 8 classes and a greedy match beyond otherwise).
- `clone_for_training_mode(model, noise=True, force_bn_batch_statistics=False)`
  and `fresh_clone(model, seed)`: the private copies the checks run.
- `DiagnosisRefused` (a `TlvizError`, from `tlviz.errors`): the input cannot be diagnosed at all.
- Judging fine-tuning runs (``catastrophic-forgetting``, `forgetting`): `judge_run(run, controls)`,
  `judge_runs(records)`, `runs_for(model_sha256, image_key, owner)`, `with_runs(report, records)`,
  `with_cli_runs(report, loaded, images, root)`; `threshold(check_id, name)`.
"""

from tlviz.diagnose.assignment import best_assignment
from tlviz.diagnose.base import SEED, Check, Threshold
from tlviz.diagnose.clones import clone_for_training_mode, fresh_clone
from tlviz.diagnose.context import TRAINING_MODE_IMAGES, DiagnosisContext, PresetEvidence
from tlviz.diagnose.forgetting import judge_run, judge_runs, runs_for, with_cli_runs, with_runs
from tlviz.diagnose.probe import PROBE_MAX_IMAGES, PROBE_RANDOM_INITS
from tlviz.diagnose.registry import AREA_TITLES, CHECK_IDS, CHECKS, SEVERITY_TITLES, check_list, threshold
from tlviz.diagnose.report import DiagnosisReport, SkippedCheck
from tlviz.diagnose.runner import diagnose
from tlviz.errors import CheckSkipped, DiagnosisRefused

if __doc__:  # None under ``python -OO``
    __doc__ = __doc__.replace("{checks}", check_list())

__all__ = [
    "AREA_TITLES", "CHECKS", "CHECK_IDS", "PROBE_MAX_IMAGES", "PROBE_RANDOM_INITS", "SEED", "SEVERITY_TITLES",
    "TRAINING_MODE_IMAGES", "Check", "CheckSkipped", "DiagnosisContext", "DiagnosisRefused", "DiagnosisReport",
    "PresetEvidence", "SkippedCheck", "Threshold", "best_assignment", "clone_for_training_mode", "diagnose",
    "fresh_clone", "judge_run", "judge_runs", "runs_for", "with_runs", "with_cli_runs", "threshold",
]
