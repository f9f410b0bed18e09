"""The data: scikit-learn's digits split once per digit (source and target tasks), written as PNG and JPEG folders."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from bench.truth.settings import HELD_OUT, SEED, SIZE, TARGET_FIRST


# -- data ---------------------------------------------------------------------------------------

def _split_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train / held-out images of the source (digits 0-9, labels 0-9) and target (digits 5-9, labels 0-4) tasks.

    One split per digit serves both tasks, so no held-out target image was seen in the source training.
    """
    from tlviz.samples import digit_images

    images, digits = digit_images()
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits == d))
        n_test = int(round(HELD_OUT * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    out = {}
    for task, first in (("source", 0), ("target", TARGET_FIRST)):
        tr = np.sort(np.concatenate(train[first:]))
        te = np.sort(np.concatenate(test[first:]))
        out[f"{task}_train"] = (images[tr], digits[tr] - first)
        out[f"{task}_test"] = (images[te], digits[te] - first)
        out[f"{task}_names"] = [str(d) for d in range(first, 10)]
    return out


def _split_sample() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The committed sample's data set: source digits 0-4 (labels 0-4), target digits 5-9 (labels 0-4).

    The source split is the one `tlviz.samples.build` trained the committed model on (80 % of digits 0-4,
    seeded), so the source held-out images are the 20 % it never saw; the target (the images of the committed
    ``digits_5_9`` folder) is split per digit, `HELD_OUT` kept for the diagnosis.
    """
    from tlviz.samples import SEED as SAMPLE_SEED
    from tlviz.samples import digit_images

    images, digits = digit_images()
    sel = np.flatnonzero(digits < 5)
    order = np.random.default_rng(SAMPLE_SEED).permutation(len(sel))
    n_train = int(0.8 * len(sel))
    tr, te = np.sort(sel[order[:n_train]]), np.sort(sel[order[n_train:]])
    out = {"source_train": (images[tr], digits[tr]), "source_test": (images[te], digits[te]),
           "source_names": [str(d) for d in range(5)]}
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for d in range(5, 10):
        idx = rng.permutation(np.flatnonzero(digits == d))
        n_test = int(round(HELD_OUT * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    tr, te = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    out.update({"target_train": (images[tr], digits[tr] - 5), "target_test": (images[te], digits[te] - 5),
                "target_names": [str(d) for d in range(5, 10)]})
    return out


#: The data sets: each gives ``{source,target}_{train,test}`` as ``(images, labels)`` and ``{source,target}_names``.
DATASETS: dict[str, Callable] = {"digits": _split_digits, "sample": _split_sample}


def write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str],
                  size: int = SIZE, labels_txt: list[str] | None = None) -> Path:
    """A class-per-folder image set (PNG); `size` other than 32 writes resized images; a `labels_txt` order."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    for k, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == k):
            img = Image.fromarray(images[i], "RGB")
            if size != SIZE:
                img = img.resize((size, size), Image.BILINEAR)
            img.save(folder / name / f"{name}_{i:04d}.png")
    if labels_txt is not None:
        (folder / "labels.txt").write_text("\n".join(labels_txt) + "\n")
    done.write_text("ok\n")
    return folder


#: Images per class filed under a wrong class in the ``likely-mislabelled`` plant (about 8 % of each class).
MISLABELLED_PER_CLASS = 6
#: Every `TURN_EVERY`-th image of the ``exif-orientation`` plant is stored turned, with the EXIF tag that turns it back.
TURN_EVERY = 3
#: EXIF orientation 6: "turn 90 degrees clockwise to show" (PIL's `ImageOps.exif_transpose` applies it).
EXIF_ORIENTATION_TAG, EXIF_ROTATE_CW = 0x0112, 6


def write_jpegs(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str], turned: bool) -> Path:
    """A class-per-folder JPEG image set (quality 95); with `turned`, every `TURN_EVERY`-th image is stored
    turned a quarter anticlockwise with EXIF orientation 6, so that a viewer that applies the tag shows it
    upright, while a loader that ignores the tag (Keras's ``load_img``) sees it on its side."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    for k, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == k)):
            img = Image.fromarray(images[i], "RGB")
            exif = Image.Exif()
            if turned and n % TURN_EVERY == 0:
                img = img.transpose(Image.Transpose.ROTATE_90)
                exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_CW
            img.save(folder / name / f"{name}_{i:04d}.jpg", quality=95, exif=exif)
    done.write_text("ok\n")
    return folder
