"""What an image set is made of: the decoded `ImageSet`, the files skipped, and the class rules.

- `ImageSet` — the decoded, labelled images at one model input size.
- `two_classes_present(labels)` — the rule fine-tuning and every accuracy measurement rest on: at
  least two classes have images (`ImageSet.two_classes_present` for a set).
- `Skipped` — a file that was not loaded, and why (the `REASON_*` sentences are shared with pages
  and tests).
- The listing a source makes before anything is decoded (`Entry`, `Listing`), the exception a
  reader raises to skip one file (`ImageSkipped`), and the class rules: which class folder an image
  path belongs to (`classify_path`), class folders without images (`find_empty_classes`), and the class
  order, sorted folder names or ``labels.txt`` (`class_order`).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tlviz.errors import ImageSetRefused, ImageSkipped
from tlviz.labels import parse_labels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
ARCHIVE_EXTENSIONS = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz", ".zst", ".lz",
                      ".lzma", ".7z", ".rar", ".cab", ".jar", ".whl", ".npz")

# Reasons shown in `ImageSet.skipped` (tests and pages may match on them).
REASON_NESTED_ARCHIVE = "archive inside the archive: not opened; unzip it and add its class folders"
REASON_NESTED_ARCHIVE_FOLDER = "archive inside the image folder: not opened; unzip it and add its class folders"
REASON_EMPTY_CLASS = "empty class folder: ignored"
REASON_NO_IMAGES_IN_CLASS = "class folder holds no image files: ignored"
REASON_LISTED_EMPTY = "listed in labels.txt but no images found (class kept, 0 images)"

#: Files in an image set that are never images (labels.txt is read for the class order).
IGNORED_NAMES = {"labels.txt", ".DS_Store", "Thumbs.db", "desktop.ini"}
#: The largest labels.txt read (one class name a line needs far less).
MAX_LABELS_BYTES = 1024 * 1024


def two_classes_present(labels) -> bool:
    """Whether at least two classes have images: what fine-tuning and accuracy need.

    Args:
        labels: integer class labels, one per image.

    Returns:
        True when the labels hold two or more distinct classes.
    """
    return len(np.unique(np.asarray(labels))) >= 2


@dataclass
class Skipped:
    """A file that was not loaded, and why."""

    file: str
    reason: str


@dataclass
class ImageSet:
    """A decoded, labelled image set at one model input size.

    Attributes:
        images: ``uint8`` array ``(N, H, W, C)``.
        labels: ``int`` array ``(N,)``, indices into `class_names`.
        class_names: class names in the model's output order.
        files: the relative path of each image, aligned with `images`.
        skipped: files that were not loaded, with the reason.
        source: where it came from (folder path or archive name).
        resize: the resize method used.
        original_sizes: ``(width, height)`` of each image before resizing.
        original_modes: Counter of PIL modes seen before conversion (``"RGB"``, ``"L"``...).
        label_order_from_file: True when `labels.txt` fixed the class order.
        orientations: the EXIF orientation of each image (1 to 8, 1 = "normal"), aligned with
            `images`; empty when not recorded (see `orientation_known`).
        orientation: ``"ignore"`` when the pixels are as stored in the files (what Keras's
            ``load_img`` gives), ``"apply"`` when each image was turned as its EXIF orientation says.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    files: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    source: str = ""
    resize: str = "bilinear"
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    original_modes: Counter = field(default_factory=Counter)
    label_order_from_file: bool = False
    orientations: list[int] = field(default_factory=list)
    orientation: str = "ignore"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        c = np.bincount(self.labels, minlength=len(self.class_names)) if len(self) else [0] * len(self.class_names)
        return {name: int(n) for name, n in zip(self.class_names, c)}

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.images.shape[1]), int(self.images.shape[2]))

    @property
    def orientation_known(self) -> bool:
        """Whether `orientations` holds one EXIF orientation per image (a set built by hand, or a
        subset made with `dataclasses.replace`, may not)."""
        return len(self.orientations) == len(self)

    @property
    def two_classes_present(self) -> bool:
        """Whether at least two classes have images (`two_classes_present`)."""
        return two_classes_present(self.labels)

    def matches(self, n_outputs: int) -> bool:
        """Whether the number of classes equals the model's number of outputs."""
        return len(self.class_names) == n_outputs

    def class_warnings(self) -> list[str]:
        """What about the classes stops fine-tuning or accuracy checks, as user-facing sentences.

        Returns:
            An empty list when every class has at least two images and there are
            at least two classes; otherwise one sentence per problem (a single
            class, classes with no images, classes with one image).
        """
        counts = self.counts
        out = []
        if not self.two_classes_present:
            present = [c for c, n in counts.items() if n > 0]
            which = f" ('{present[0]}')" if present else ""
            out.append(f"Only one class has images{which}: fine-tuning and accuracy need at least two classes. "
                       "Put the images in one sub-folder per class.")
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            out.append(f"No images in class(es) {', '.join(repr(c) for c in empty[:10])}"
                       f"{' …' if len(empty) > 10 else ''}: they cannot be learned or measured.")
        single = [c for c, n in counts.items() if n == 1]
        if single:
            out.append(f"A single image in class(es) {', '.join(repr(c) for c in single[:10])}"
                       f"{' …' if len(single) > 10 else ''}: a validation split needs at least two per class.")
        return out


@dataclass
class Entry:
    """One file of an image set while it is listed: where it is, its class, and how to read it."""

    rel: str  # path relative to the image-set root, posix style
    cls: str
    read: Callable[[int], bytes]  # read(cap): the file's bytes, at most `cap`; raises ImageSkipped with a reason


@dataclass
class Listing:
    """What a folder or an archive holds, listed before anything is decoded."""

    entries: list[Entry]
    labels_txt: str | None
    skipped: list[Skipped]
    empty_classes: dict[str, str]


def classify_path(rel: str, skipped: list[Skipped], archive_reason: str = REASON_NESTED_ARCHIVE) -> str | None:
    """The class of an image path, or None (with a `Skipped` added when worth telling)."""
    parts = rel.split("/")
    name = parts[-1]
    if name in IGNORED_NAMES or name.startswith("."):
        return None
    lower = name.lower()
    if lower.endswith(ARCHIVE_EXTENSIONS):
        skipped.append(Skipped(rel, archive_reason))
        return None
    if len(parts) == 1:
        skipped.append(Skipped(rel, "not inside a class folder: put each image in a sub-folder named after its class"))
        return None
    if not lower.endswith(IMAGE_EXTENSIONS):
        skipped.append(Skipped(rel, f"not an image file (supported: {', '.join(IMAGE_EXTENSIONS)})"))
        return None
    return unicodedata.normalize("NFC", parts[0])


def find_empty_classes(files_per_class: dict[str, int], images_per_class: Counter) -> dict[str, str]:
    """Class folders to report: with no files at all, or with files but no image files."""
    out = {}
    for c, nfiles in files_per_class.items():
        key = unicodedata.normalize("NFC", c)
        if images_per_class.get(key, 0):
            continue
        out[key] = REASON_EMPTY_CLASS if nfiles == 0 else REASON_NO_IMAGES_IN_CLASS
    return out


def read_labels(read, name: str) -> str:
    """The text of labels.txt; a labels file that cannot be read refuses the set (the class order depends on it)."""
    try:
        data = read()
    except ImageSkipped as exc:
        raise ImageSetRefused(f"labels.txt in {name} could not be read: {exc}. Fix labels.txt, or remove it to "
                              "use the sorted folder names.") from None
    return data.decode("utf-8-sig", errors="replace")


def class_order(entries: list[Entry], labels_txt: str | None, empty_classes: dict[str, str],
                 skipped: list[Skipped], name: str) -> tuple[list[str], bool, list[Skipped]]:
    """The class names in output order: ``labels.txt`` when there is one, else the sorted folder names.

    Returns:
        ``(class_names, order_from_file, skipped)``: `skipped` extended with the empty class
        folders (those not kept by ``labels.txt``) and the classes it lists without images.

    Raises:
        ImageSetRefused: no class folder holds an image, or ``labels.txt`` lists a class twice.
    """
    skipped = list(skipped)
    found = sorted({e.cls for e in entries})
    listed = None
    if labels_txt is not None:
        listed = parse_labels(labels_txt)
    for c, reason in sorted(empty_classes.items()):
        if listed is None or c not in listed:
            skipped.append(Skipped(f"{c}/", reason))
    if not found:
        empty = sorted(empty_classes)
        detail = f" The class folders {', '.join(c + '/' for c in empty[:5])} hold no image files." if empty else ""
        raise ImageSetRefused(
            f"No class folders with images found in {name}.{detail} Put the images in one sub-folder "
            "per class (e.g. cats/001.jpg, dogs/002.jpg)."
        )
    if listed is None:
        return found, False, skipped
    if len(set(listed)) != len(listed):
        raise ImageSetRefused("labels.txt lists a class twice. Give each class name once, in the model's output order.")
    missing = [c for c in listed if c not in found]
    for c in missing:
        skipped.append(Skipped(f"{c}/", REASON_LISTED_EMPTY))
    return listed, True, skipped
