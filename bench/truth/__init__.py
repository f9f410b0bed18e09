"""How often is the diagnoser right? Precision and recall over a matrix of planted faults.

Run: ``python -m bench.truth`` from the repository root (trained models are cached under
``/tmp/tlviz_truth_matrix``, or ``--cache DIR``; the CNN and sample families took 5.8 minutes on two CPU cores
with the CNN's models cached, the three digits families 19 minutes from scratch before the cases of issue 22
were added). ``--quick`` runs the small CNN family only; ``--family NAME`` and ``--case TEXT`` pick others;
``--json PATH`` writes every case's findings; ``--smoke`` runs two cases of the CNN family trained for one
epoch in a temporary cache, a few seconds' proof that the matrix still runs (its figures mean nothing).

What it does, in this process, with nothing downloaded:

- **Data**: scikit-learn's bundled digits (``tlviz.samples.digit_images``: 8x8 digits drawn as warm
  strokes on a dark background at 32x32 RGB), split once per digit, 60 % to train and 40 % kept for
  the diagnosis (written as PNG folders, loaded with `tlviz.imagesets.load_image_set`, as a user's
  folder would be). All ten digits are the *source* task (the pre-training); digits 5-9 under a new
  5-class head are the *target* task, as a user's classes are often among an ImageNet base's. (With
  digits 0-4 as the source, MobileNetV2's trained features were worse than random ones for digits
  5-9 by an independent logistic-regression probe, 47 % against 77 %: such a base is not a clean
  control.) No held-out target image was seen in any training.
  A second data set, ``sample``: the committed sample's (`tlviz.samples`): digits 0-4 as the source
  task, diagnosed on the 20 % the committed ``digits_base.keras`` was not trained on, and digits 5-9
  (the committed ``digits_5_9`` images) as the target. scikit-image's textures are not used: scikit-image
  is not a dependency of this project, and no installed package ships another labelled image set.
- **Model families**, trained here (seeded, a few epochs, CPU): a small CNN (input prepared with
  ``unit``), a MobileNetV2 (Keras's own architecture, ``alpha=0.35``, ``weights=None``, ``tf``) and a
  ResNet-shaped network (residual blocks with Keras's ResNet layer names, ``torch``). Each is trained
  end to end on the source task (the *trained* model); its features (up to global pooling) then serve
  as the pre-trained base for the target task, following the keras-io transfer-learning guide:
  ``base(inputs, training=False)``, the base frozen while the new head trains (*phase 1*), then
  ``base.trainable = True``, recompiled at ``1e-5`` and trained 2 epochs (*two-phase recipe*; Keras 3
  would pass ``fit``'s ``training=True`` into the base despite the recorded ``training=False``, so the
  recipe trains with `tlviz.callargs.honour_recorded_training`, as the guide means it). The same is
  done on a base with fresh random weights (never trained). The ``sample`` family is the committed
  sample model (the small CNN's architecture, trained with ``tf`` outside the matrix) on the ``sample``
  data set, transferred the same way. Each family also trains its features end to end under a new head
  (a nested base, trainable, called as ``base(inputs)``: its BatchNormalization trains).
- **Cases**: per family, clean controls (the trained model with the right preset and labels on PNG and
  JPEG files, phase 1, the two-phase recipe, the model trained end to end) and one case per fault tlviz
  can plant (each registry check's positive case; see `CASE_TABLE`); ten of them again under the
  family's first wrong preset (`WRONG_PRESET_CASES`, named ``case@preset``); and a model whose first
  BatchNormalization layer stores another preset's statistics with the same function (accuracy and the
  fingerprint then disagree), under the right and under that preset. Each case declares, before
  anything runs, the checks its plant makes true (``planted``) and the consequences a plant may or may
  not cause (``allowed``: not scored for that case, e.g. a model whose BatchNormalization statistics
  were reset may also fall to chance). Everything else must stay quiet.
- **Fine-tuning cases** (`RUN_CASE_TABLE`, per family): ``catastrophic-forgetting`` judges runs, not a
  file, so these cases fine-tune the phase 1 model with tlviz's own runs (`tlviz.finetune.run.run_finetune`)
  and a control (head-only or random-init), store both as the app does, and diagnose with them
  (`tlviz.diagnose.forgetting.with_runs`, as the Diagnose page does). Planted: the whole base at a rate far
  too high for it (Adam 0.1; SGD 1.0). Clean: the guide's low rates (the whole base at 1e-5, the top layers
  at 1e-4). That check is scored on these cases only, and the other checks on the model-file cases only.
- **Scoring**: `tlviz.diagnose.diagnose` runs every check on every model-file case. Error and warning findings
  (the registry's severities, and the ``measured_severity`` an advice is raised to on a measured effect)
  are scored per check and overall: TP / FP / FN / TN, precision and
  recall with 95 % Wilson intervals; a planted check that was skipped is a miss. Info findings are
  reported separately: ``input-resized`` and ``training-mode-inference`` against a structural truth
  (images were resized; the model has a Dropout / noise layer, or a BatchNormalization layer that runs
  in training mode), the two sensitivity checks (resize method, channel order) only counted, since
  what they report is a measurement, not a plant.
- **A reference without tlviz** (`Env.reference`): a logistic regression on the whole train split,
  on the trained base's features and on random ones. A trained base is a negative case for
  ``pretraining-no-better-than-random`` by construction; where this reference finds it no better than
  random features on the task, the claim is arguably true, so the figures with those cases left
  unscored for that check are printed as well (the targets use the main figures).
- **Targets** (issue 13): recall >= 0.95 and precision >= 0.95 overall, no check below 0.9 on either,
  and the clean controls with no error or warning. They are printed as met or not met; the truth is
  never adjusted to the output.

The package: `settings` (seed, sizes, targets), `families` (the networks), `data` (digits as image folders),
`models` (`Env`: training and caching each family's models), `faults` (each case's plant), `case_table`
(`Case`, the tables, `cases()`), `running` (`run_case`, `rejudged`), `scoring` (`score`, `report`), and the
command line in `__main__`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench.truth.case_table import CASE_TABLE, RUN_CASE_TABLE, WRONG_PRESET_CASES, Case, cases  # noqa: E402
from bench.truth.families import FAMILIES, QUICK_FAMILIES, Family  # noqa: E402
from bench.truth.faults import FOOLED_TOWARD  # noqa: E402
from bench.truth.models import Env  # noqa: E402
from bench.truth.running import Result, rejudged, run_case, scored_checks  # noqa: E402
from bench.truth.scoring import report, score  # noqa: E402
from bench.truth.settings import FORGETTING, RUN_CHECKS  # noqa: E402

__all__ = ["CASE_TABLE", "RUN_CASE_TABLE", "WRONG_PRESET_CASES", "Case", "cases", "FAMILIES", "QUICK_FAMILIES",
           "Family", "FOOLED_TOWARD", "Env", "Result", "rejudged", "run_case", "scored_checks", "report", "score",
           "FORGETTING", "RUN_CHECKS"]
