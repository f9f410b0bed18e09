"""A job's inputs: the model and the images saved once per content where a worker loads them again.

The server saves them under ``<runs dir>/.inputs``: the model as ``.keras`` (named by its
content key), the images as ``.npz`` (named by `tlviz.contentkeys.image_set_key`: pixels,
labels, class names and files). A worker process (or a Ray worker, from the arrays the
driver put in the object store) rebuilds the `LoadedModel` and the `ImageSet` the server
had, metadata included.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from tlviz.contentkeys import image_set_key, model_key, pixels_key
from tlviz.finetune.store import runs_dir

# Sessions may save the same shared model at once; one writer per inputs folder.
_INPUTS_LOCK = threading.Lock()


def prepare_inputs(loaded, images, root=None) -> dict:
    """Save the model and the images where a worker can load them (once per content).

    Args:
        loaded: the `LoadedModel`.
        images: the `ImageSet`.
        root: the runs folder. Defaults to `runs_dir()`.

    Returns:
        ``{"model_file", "images_file", "image_key", "model_key"}``: ``image_key``
        hashes the pixels (`tlviz.contentkeys.pixels_key`); the ``.npz`` is
        named by `tlviz.contentkeys.image_set_key` (pixels, labels, class names and files).
    """
    with _INPUTS_LOCK:
        inputs = runs_dir(root) / ".inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        mkey = model_key(loaded)
        model_file = inputs / f"{mkey[:32]}.keras"
        if not model_file.exists():
            tmp = inputs / f".{mkey[:32]}.{os.getpid()}.{threading.get_ident()}.keras"
            loaded.model.save(tmp)
            os.replace(tmp, model_file)
        os.utime(model_file)  # recently used: kept by `tidy`
        image_key = pixels_key(images.images)
        images_file = _save_images(images, image_key, root)
    return {"model_file": str(model_file), "images_file": str(images_file), "image_key": image_key,
            "model_key": mkey}


def prepare_original(original, root=None) -> dict:
    """Save the original task's image set where a worker can load it (once per content).

    Returns:
        ``{"original_file": path of its .npz, "original": {"source", "n", "class_names", "image_key"}}``.
    """
    with _INPUTS_LOCK:
        key = pixels_key(original.images)
        path = _save_images(original, key, root)
    return {"original_file": str(path), "original": images_info(original, key)}


def _save_images(images, image_key: str, root=None) -> Path:
    """Save an image set as ``.inputs/<image_set_key>.npz`` (once per content; callers hold `_INPUTS_LOCK`)."""
    inputs = runs_dir(root) / ".inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    set_key = image_set_key(images, image_key)
    images_file = inputs / f"{set_key}.npz"
    if not images_file.exists():
        tmp = inputs / f".{set_key}.{os.getpid()}.{threading.get_ident()}.npz"
        details = {"skipped": [[s.file, s.reason] for s in images.skipped],
                   "original_sizes": [list(map(int, sz)) for sz in images.original_sizes],
                   "original_modes": dict(images.original_modes),
                   "label_order_from_file": bool(images.label_order_from_file)}
        with open(tmp, "wb") as f:
            np.savez(f, images=images.images, labels=images.labels,
                     class_names=np.array(images.class_names, dtype=object).astype(str),
                     files=np.array(list(images.files), dtype=object).astype(str),
                     details=np.array(json.dumps(details)))
        os.replace(tmp, images_file)
    os.utime(images_file)
    return images_file


def model_info(loaded) -> dict:
    """What a job records about its model (``job.json``'s ``model``, and each run's config)."""
    return {"name": loaded.name, "filename": loaded.filename, "sha256": loaded.sha256,
            "metadata": loaded.metadata}


def images_info(images, image_key) -> dict:
    """What a job records about its image set (``job.json``'s ``images``, and each run's config)."""
    return {"source": images.source, "n": len(images), "class_names": list(images.class_names),
            "image_key": image_key, "resize": images.resize}


def load_inputs(job: dict):
    """The `LoadedModel` and `ImageSet` saved by `prepare_inputs` for `job`, as the server had them."""
    return loaded_from(job["model_file"], job), image_set_from(read_images_file(job["images_file"]), job)


def load_original(job: dict, arrays: dict | None = None):
    """The original task's `ImageSet` of a job (`prepare_original`), or None when the job has none.

    Args:
        job: the job's ``job.json``.
        arrays: the arrays of its images file, when they came another way (a Ray worker). Defaults to reading
            ``original_file``.
    """
    if not job.get("original") or (arrays is None and not job.get("original_file")):
        return None
    arrays = read_images_file(job["original_file"]) if arrays is None else arrays
    return image_set_from(arrays, {"images": job["original"]})


def read_images_file(path) -> dict:
    """The arrays of an images ``.npz`` written by `prepare_inputs` (``images``, ``labels``, ...), in memory."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def loaded_from(source, job: dict):
    """The `LoadedModel` of a job from its saved file or its bytes, with the metadata the server had.

    Args:
        source: the ``.keras`` file's path, or its bytes (a Ray worker gets them from the object store).
        job: the job's ``job.json`` (``model``, ``model_key``).
    """
    from tlviz.models import load_model

    loaded = load_model(source, filename=job["model"].get("filename") or None)
    loaded.metadata = dict(job["model"].get("metadata") or {})
    loaded.sha256 = job.get("model_key") or loaded.sha256
    return loaded


def image_set_from(arrays: dict, job: dict):
    """The `ImageSet` of a job from the arrays of its images file (`read_images_file`).

    Args:
        arrays: ``images``, ``labels``, ``class_names``, ``files`` and ``details``.
        job: the job's ``job.json`` (``images``: source and resize method).
    """
    from tlviz.imagesets import ImageSet, Skipped

    details = json.loads(str(arrays["details"])) if "details" in arrays else {}
    return ImageSet(images=arrays["images"], labels=np.asarray(arrays["labels"]).astype(np.int64),
                    class_names=[str(c) for c in arrays["class_names"]], files=[str(f) for f in arrays["files"]],
                    source=job["images"].get("source", ""), resize=job["images"].get("resize", "bilinear"),
                    skipped=[Skipped(f, r) for f, r in details.get("skipped", [])],
                    original_sizes=[tuple(sz) for sz in details.get("original_sizes", [])],
                    original_modes=Counter(details.get("original_modes", {})),
                    label_order_from_file=bool(details.get("label_order_from_file", False)))
