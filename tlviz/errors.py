"""Every error class of tlviz. A `TlvizError`'s message is meant for the user: what was wrong and what to do.

Where each is raised:

- `ModelRefused` — `tlviz.models`: a file that is not a loadable, self-contained Keras model.
- `ImageSetRefused` — `tlviz.imagesets`: an image set refused as a whole (single bad images are skipped).
- `NormalizationRefused` — `tlviz.normalize`: the comparison cannot run on this input.
- `DiagnosisRefused` — `tlviz.diagnose`: the diagnosis cannot run at all.
- `RunRefused` — `tlviz.finetune`: a fine-tuning configuration or run that cannot go ahead.
- `AnalysisRefused` — `tlviz.jobs`: a background job that cannot be started.
- `RepairRefused` — `tlviz.repair`: an unknown repair, or one that does not apply to this model and these images.
- `ClusterUnreachable` — `tlviz.jobs.executors`: the Ray cluster of ``TLVIZ_RAY_ADDRESS`` cannot be reached
  (the caller may offer to run on this machine instead).
- `ConfigError` — `tlviz.config`: a ``TLVIZ_*`` environment variable with a value that makes no sense.
- `AuthMisconfigured` — `tlviz.signin`: sign-in asked for (an ``[auth]`` section, an allowlist) that cannot work.
- `CheckSkipped` — not an error for the user: a diagnosis check raises it to say why it could not decide.
- `ImageSkipped` — not an error for the user: `tlviz.imagesets` raises it while reading or decoding one file and
  catches it to skip that file (the message is the reason listed with the skipped files).
"""


class TlvizError(Exception):
    """Base class: the message is complete, user-facing text."""


class ModelRefused(TlvizError):
    """The uploaded file could not be accepted as a Keras model."""


class ImageSetRefused(TlvizError):
    """The image set (folder or archive) was refused as a whole."""


class NormalizationRefused(TlvizError):
    """The normalization check cannot run on this input (the message says why and what to do)."""


class DiagnosisRefused(TlvizError):
    """The diagnosis cannot run on this input (the message says why and what to do)."""


class RunRefused(TlvizError):
    """A fine-tuning run cannot go ahead (bad configuration, or it would not fit in memory)."""


class AnalysisRefused(TlvizError):
    """A background analysis job cannot be started (the message says why and what to do)."""


class RepairRefused(TlvizError):
    """A repair cannot be made: unknown, not applicable to this model and image set (the message says why)."""


class ClusterUnreachable(TlvizError):
    """The Ray cluster named by ``TLVIZ_RAY_ADDRESS`` cannot be reached (the message says what was tried)."""


class PhotoRefused(TlvizError):
    """A photo given to the Try page cannot be used (not an image, too large, corrupt)."""


class ConfigError(TlvizError, ValueError):
    """A ``TLVIZ_*`` environment variable is set to something tlviz cannot use (the message names it)."""


class AuthMisconfigured(ConfigError):
    """Sign-in was asked for (an ``[auth]`` section, ``TLVIZ_ALLOWED_USERS``) but cannot work; the message names
    every problem and its fix (`tlviz.signin`)."""


class CheckSkipped(Exception):
    """Raised inside a diagnosis check: it cannot decide; the message is the sentence shown to the user."""


class ImageSkipped(Exception):
    """Raised while reading or decoding one file of an image set: it is skipped, and the message is the reason."""
