"""The registry of job kinds: every kind of heavy job the job system runs, by name.

Adding a kind is one module under `tlviz.jobs.kinds` (a ``KIND = JobKind(...)``: see
`tlviz.jobs.kind`) and one entry in `KINDS`. The worker process looks its job's kind up here
(`get_kind`); an analysis is started with `tlviz.jobs.start_analysis`, a fine-tuning job with
`tlviz.jobs.start_job` / `tlviz.jobs.start_lr_finder`; all of them are followed with the same
`poll`, `cancel` and `wait`.

=============  ====================================================  ==================
kind           what it runs                                          executors
=============  ====================================================  ==================
``normalize``  the normalization comparison (`tlviz.normalize`)      local
``diagnose``   every check of `tlviz.diagnose`                       local
``repair``     fixes applied to the model, with proof (`tlviz.repair`)  local
``gradcam``    Grad-CAM heatmaps (`tlviz.gradcam`)                   local
``runs``       fine-tuning runs, one or a sweep (`tlviz.finetune`)   local, Ray
``lrfind``     the learning-rate range test                          local, Ray
=============  ====================================================  ==================
"""

from __future__ import annotations

from tlviz.errors import TlvizError
from tlviz.jobs.kind import JobKind
from tlviz.jobs.kinds import diagnose, gradcam, lrfind, normalize, repair, runs

KINDS: dict[str, JobKind] = {k.name: k for k in (normalize.KIND, diagnose.KIND, repair.KIND, gradcam.KIND,
                                                 runs.KIND, lrfind.KIND)}
#: The kinds whose result is stored by key (`tlviz.jobs.results`).
ANALYSIS_KINDS = tuple(name for name, k in KINDS.items() if k.is_analysis)
#: The kinds whose status carries runs of the run store (`tlviz.jobs.status.RUN_KINDS`).
RUN_KINDS = tuple(name for name, k in KINDS.items() if not k.is_analysis)


def get_kind(name: str) -> JobKind:
    """The kind called `name`.

    Raises:
        TlvizError: no such kind; the message names every kind and how to add one.
    """
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise TlvizError(f"Unknown job kind {name!r}. Use one of: {', '.join(KINDS)} (a new kind is a module "
                             "of tlviz.jobs.kinds and an entry in tlviz.jobs.registry.KINDS).")
    return kind
