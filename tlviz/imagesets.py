"""Image sets: labelled images, one sub-folder per class, from a folder or a `.zip`.

Every image is decoded once, converted to the model's channel count, resized to
the model's input size and held as ``uint8``. Files that cannot be used are
skipped and listed with the reason; archives that look hostile are refused as a
whole.

Limits (override with environment variables):

- ``TLVIZ_MAX_ARCHIVE_ENTRIES`` — entries in a `.zip` (default 50,000).
- ``TLVIZ_MAX_ARCHIVE_MB`` — total uncompressed size of a `.zip` (default 2,048 MB).
- ``TLVIZ_MAX_IMAGE_PIXELS`` — pixels in one image (default 40,000,000); larger
  images are treated as decompression bombs and skipped.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from tlviz.errors import ImageSetRefused

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
RESIZE_METHODS = ("bilinear", "nearest", "area", "crop")
RESIZE_DESCRIPTIONS = {
    "bilinear": "bilinear resize (the Keras / tf.image default)",
    "nearest": "nearest-neighbour resize",
    "area": "area (box) resize",
    "crop": "centre crop to a square, then bilinear resize",
}

_PIL_FILTERS = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "area": Image.BOX, "crop": Image.BILINEAR}
_IGNORED_NAMES = {"labels.txt", ".DS_Store", "Thumbs.db", "desktop.ini"}


def _env_int(name: str, default: int) -> int:
    try:
        return int(float(os.environ.get(name, default)))
    except ValueError:
        return default


def max_archive_entries() -> int:
    return _env_int("TLVIZ_MAX_ARCHIVE_ENTRIES", 50_000)


def max_archive_bytes() -> int:
    return _env_int("TLVIZ_MAX_ARCHIVE_MB", 2048) * 1024 * 1024


def max_image_pixels() -> int:
    return _env_int("TLVIZ_MAX_IMAGE_PIXELS", 40_000_000)


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

    def matches(self, n_outputs: int) -> bool:
        """Whether the number of classes equals the model's number of outputs."""
        return len(self.class_names) == n_outputs


@dataclass
class _Entry:
    rel: str  # path relative to the image-set root, posix style
    cls: str
    read: object  # callable returning bytes


# -- sources -----------------------------------------------------------------

class ImageSource:
    """Where an image set comes from; can be decoded again at another size.

    Create with `ImageSource.from_folder` or `ImageSource.from_zip`. Archive
    safety checks run at creation, so a hostile archive is refused before any
    image is decoded.
    """

    def __init__(self, name: str, entries: list[_Entry], labels_txt: str | None, skipped: list[Skipped]):
        self.name = name
        self._entries = entries
        self._labels_txt = labels_txt
        self._skipped = skipped

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "ImageSource":
        root = Path(folder)
        if not root.is_dir():
            raise ImageSetRefused(f"Image folder not found: {root}. Give a folder with one sub-folder per class.")
        entries, skipped = [], []
        labels_txt = None
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                skipped.append(Skipped(rel, "symbolic link: not followed"))
                continue
            if path.is_dir():
                continue
            if rel == "labels.txt":
                labels_txt = path.read_text(errors="replace")
                continue
            entry = _classify(rel, skipped)
            if entry is not None:
                entries.append(_Entry(rel, entry, (lambda p=path: p.read_bytes())))
        return cls(str(root), entries, labels_txt, skipped)

    @classmethod
    def from_zip(cls, data: bytes, name: str = "upload.zip") -> "ImageSource":
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ImageSetRefused(f"{name} is not a readable zip archive ({exc}). Zip the class folders again.") from None
        if len(infos) > max_archive_entries():
            raise ImageSetRefused(
                f"{name} has {len(infos):,} entries, over the limit of {max_archive_entries():,}. "
                "Upload a smaller sample, or raise TLVIZ_MAX_ARCHIVE_ENTRIES."
            )
        total = sum(i.file_size for i in infos)
        if total > max_archive_bytes():
            raise ImageSetRefused(
                f"{name} unpacks to {total / 1e6:,.0f} MB, over the limit of "
                f"{max_archive_bytes() / 1024 / 1024:,.0f} MB. Upload a smaller sample, or raise "
                "TLVIZ_MAX_ARCHIVE_MB."
            )
        for info in infos:
            raw = info.filename
            if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
                raise ImageSetRefused(f"{name} is refused: entry '{raw}' has an absolute path. "
                                      "Zip the class folders with relative paths.")
            parts = PurePosixPath(raw.replace("\\", "/")).parts
            if ".." in parts:
                raise ImageSetRefused(f"{name} is refused: entry '{raw}' points outside the archive ('..'). "
                                      "Zip the class folders with plain relative paths.")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ImageSetRefused(f"{name} is refused: entry '{raw}' is a symbolic link. "
                                      "Zip real files only (e.g. `zip -r` without `--symlinks`).")
        names = [i.filename for i in infos if not i.is_dir()]
        names = [n for n in names if not _hidden(n)]
        prefix = _common_root(names)
        entries, skipped, labels_txt = [], [], None
        for info in infos:
            if info.is_dir() or _hidden(info.filename):
                continue
            rel = info.filename[len(prefix):]
            if rel == "labels.txt":
                labels_txt = zf.read(info).decode("utf-8", errors="replace")
                continue
            c = _classify(rel, skipped)
            if c is not None:
                entries.append(_Entry(rel, c, (lambda i=info: zf.read(i))))
        entries.sort(key=lambda e: e.rel)
        return cls(name, entries, labels_txt, skipped)

    def load(self, size: tuple[int, int], channels: int = 3, resize: str = "bilinear",
             progress=None) -> ImageSet:
        """Decode every image at `size` with `channels` channels.

        Args:
            size: ``(height, width)``.
            channels: 1 or 3. Defaults to `3`.
            resize: one of `RESIZE_METHODS`. Defaults to `"bilinear"`.
            progress: optional callable ``progress(done, total)``.

        Returns:
            An `ImageSet`; files that could not be used are in its `skipped` list.

        Raises:
            ImageSetRefused: when no class folder or no usable image is found.
        """
        if resize not in RESIZE_METHODS:
            raise ValueError(f"Unknown resize method {resize!r}. Use one of: {', '.join(RESIZE_METHODS)}.")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {channels}.")
        class_names, order_from_file, skipped = self._class_names()
        index = {c: i for i, c in enumerate(class_names)}
        h, w = size
        images = np.empty((len(self._entries), h, w, channels), dtype=np.uint8)
        labels, files, sizes, modes = [], [], [], Counter()
        n = 0
        wanted = []
        for entry in self._entries:
            if entry.cls in index:
                wanted.append(entry)
            else:
                skipped.append(Skipped(entry.rel, f"class folder '{entry.cls}' is not listed in labels.txt"))

        def work(entry):
            try:
                return decode_image(entry.read(), size, channels, resize)
            except _SkipImage as exc:
                return str(exc)

        # Pillow releases the GIL while it decodes and resizes, so threads help.
        workers = max(1, min(8, os.cpu_count() or 1))
        chunk = 64
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(wanted), chunk):
                if progress is not None:
                    progress(start, len(self._entries))
                part = wanted[start:start + chunk]
                for entry, out in zip(part, pool.map(work, part)):
                    if isinstance(out, str):
                        skipped.append(Skipped(entry.rel, out))
                        continue
                    arr, orig_size, mode = out
                    images[n] = arr
                    n += 1
                    labels.append(index[entry.cls])
                    files.append(entry.rel)
                    sizes.append(orig_size)
                    modes[mode] += 1
        if progress is not None:
            progress(len(self._entries), len(self._entries))
        if n == 0:
            detail = f" {len(skipped)} files were skipped, e.g. {skipped[0].file}: {skipped[0].reason}." if skipped else ""
            raise ImageSetRefused(
                f"No usable images found in {self.name}.{detail} An image set needs one sub-folder per "
                f"class holding images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        return ImageSet(
            images=images[:n].copy() if n < len(images) else images,
            labels=np.asarray(labels, dtype=np.int64),
            class_names=class_names,
            files=files,
            skipped=skipped,
            source=self.name,
            resize=resize,
            original_sizes=sizes,
            original_modes=modes,
            label_order_from_file=order_from_file,
        )

    def read_bytes(self, rel: str) -> bytes:
        """The raw bytes of one image by its relative path."""
        for e in self._entries:
            if e.rel == rel:
                return e.read()
        raise KeyError(rel)

    def _class_names(self) -> tuple[list[str], bool, list[Skipped]]:
        skipped = list(self._skipped)
        found = sorted({e.cls for e in self._entries})
        if not found:
            raise ImageSetRefused(
                f"No class folders with images found in {self.name}. Put the images in one sub-folder "
                "per class (e.g. cats/001.jpg, dogs/002.jpg)."
            )
        if self._labels_txt is None:
            return found, False, skipped
        listed = [ln.strip() for ln in self._labels_txt.splitlines() if ln.strip()]
        if len(set(listed)) != len(listed):
            raise ImageSetRefused("labels.txt lists a class twice. Give each class name once, in the model's output order.")
        missing = [c for c in listed if c not in found]
        for c in missing:
            skipped.append(Skipped(f"{c}/", "listed in labels.txt but no images found (class kept, 0 images)"))
        return listed, True, skipped


class _SkipImage(Exception):
    pass


def _hidden(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _common_root(names: list[str]) -> str:
    """A folder wrapping all class folders (``myset/cats/1.jpg``) is stripped."""
    prefix = ""
    while names:
        rest = [n[len(prefix):] for n in names]
        tops = {r.split("/", 1)[0] for r in rest}
        if len(tops) == 1 and all(r.count("/") >= 2 or r.endswith("/labels.txt") for r in rest):
            prefix += tops.pop() + "/"
            continue
        break
    return prefix


def _classify(rel: str, skipped: list[Skipped]) -> str | None:
    parts = rel.split("/")
    name = parts[-1]
    if name in _IGNORED_NAMES or name.startswith("."):
        return None
    if len(parts) == 1:
        skipped.append(Skipped(rel, "not inside a class folder: put each image in a sub-folder named after its class"))
        return None
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        skipped.append(Skipped(rel, f"not an image file (supported: {', '.join(IMAGE_EXTENSIONS)})"))
        return None
    return parts[0]


def decode_image(data: bytes, size: tuple[int, int], channels: int = 3,
                 resize: str = "bilinear") -> tuple[np.ndarray, tuple[int, int], str]:
    """Decode one image to ``uint8`` ``(H, W, channels)``.

    Grayscale, RGBA (composited on white), palette, CMYK and 16-bit images are
    converted. Raises `_SkipImage` with a reason for unusable data.

    Returns:
        ``(array, (orig_width, orig_height), orig_mode)``.
    """
    if not data:
        raise _SkipImage("empty file (0 bytes)")
    limit = max_image_pixels()
    try:
        img = Image.open(io.BytesIO(data))
        w0, h0 = img.size
        if w0 * h0 > limit:
            raise _SkipImage(f"{w0}x{h0} pixels is over the limit of {limit:,} (possible decompression bomb)")
        mode = img.mode
        img.load()
    except _SkipImage:
        raise
    except Image.DecompressionBombError as exc:
        raise _SkipImage(f"refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise _SkipImage("truncated image file") from None
        if isinstance(exc, Image.UnidentifiedImageError):
            raise _SkipImage("not a readable image (unknown or corrupt format)") from None
        raise _SkipImage(f"corrupt image ({text[:120]})") from None
    img = _to_mode(img, channels)
    h, w = size
    if resize == "crop":
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (w, h):
        img = img.resize((w, h), _PIL_FILTERS[resize])
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., np.newaxis]
    return arr, (w0, h0), mode


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    target = "L" if channels == 1 else "RGB"
    return img.convert(target) if img.mode != target else img


def load_image_set(source: str | os.PathLike | bytes, size: tuple[int, int], channels: int = 3,
                   resize: str = "bilinear", name: str | None = None, progress=None) -> ImageSet:
    """Load an image set from a folder path, a `.zip` path or `.zip` bytes.

    Args:
        source: folder, path to a `.zip`, or the `.zip` file's bytes.
        size: ``(height, width)`` to resize to (the model's input size).
        channels: 1 or 3. Defaults to `3`.
        resize: one of `RESIZE_METHODS`. Defaults to `"bilinear"`.
        name: display name for bytes input. Defaults to `"upload.zip"`.
        progress: optional callable ``progress(done, total)``.

    Returns:
        An `ImageSet`.

    Raises:
        ImageSetRefused: the set as a whole cannot be used (message says why).
    """
    return open_source(source, name=name).load(size, channels, resize, progress=progress)


def open_source(source: str | os.PathLike | bytes, name: str | None = None) -> ImageSource:
    """An `ImageSource` for a folder path, a `.zip` path or `.zip` bytes."""
    if isinstance(source, (bytes, bytearray)):
        return ImageSource.from_zip(bytes(source), name or "upload.zip")
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise ImageSetRefused(f"{path.name} is not a folder or a .zip archive. Give a folder with one "
                                  "sub-folder per class, or a .zip of such a folder.")
        return ImageSource.from_zip(path.read_bytes(), path.name)
    return ImageSource.from_folder(path)
