"""Errors whose message is meant for the user: what was wrong and what to do."""


class TlvizError(Exception):
    """Base class: the message is complete, user-facing text."""


class ModelRefused(TlvizError):
    """The uploaded file could not be accepted as a Keras model."""


class ImageSetRefused(TlvizError):
    """The image set (folder or archive) was refused as a whole."""
