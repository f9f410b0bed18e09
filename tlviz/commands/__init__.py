"""The sub-commands of ``python -m tlviz`` / ``tlviz``, one module each (`tlviz.cli` finds them by name).

Shared by the commands that take a model and an image set: `load_inputs`.
"""

from __future__ import annotations


def load_inputs(model_path, images_path, progress) -> tuple:
    """Load the model, then the image set at the model's input size, saying so on the progress line.

    Args:
        model_path: the model file (``.keras`` or ``.h5``).
        images_path: a folder with one sub-folder per class, or a ``.zip`` of one.
        progress: the command's reporter (`tlviz.progress.reporter_for`).

    Returns:
        ``(loaded, source, images)``: the `LoadedModel`, the `ImageSource` the images came from (it
        can be read again, e.g. to compare resize methods) and the decoded `ImageSet`.

    Raises:
        ModelRefused: the model file cannot be loaded.
        ImageSetRefused: the image set cannot be used.
    """
    from tlviz.imagesets import open_source
    from tlviz.models import load_model

    progress(0.0, "Loading the model…")
    loaded = load_model(model_path)
    progress(0.0, "Loading the images…")
    source = open_source(images_path)
    return loaded, source, source.load(loaded.image_size, loaded.channels)
