"""Image sets: labelled images, one sub-folder per class, from a folder or a `.zip`.

Every image is decoded once, converted to the model's channel count, resized to
the model's input size and held as ``uint8``. Files that cannot be used are
skipped and listed with the reason; archives that look hostile are refused as a
whole before any image is decoded.

Limits (override with environment variables):

- ``TLVIZ_MAX_ARCHIVE_ENTRIES`` — entries in a `.zip`, or files under a folder
  (default 50,000). A `.zip`'s count is read from its end record before its
  entry list is parsed.
- ``TLVIZ_MAX_ARCHIVE_MB`` — total uncompressed size a `.zip`'s entries declare
  (default 2,048 MB).
- ``TLVIZ_MAX_IMAGE_MB`` — one image file, uncompressed (default 100 MB); a
  larger file is skipped without being read.
- ``TLVIZ_MAX_DECODED_MB`` — memory for the decoded set at the model's input size
  (default 4,096 MB, e.g. 27,000 images at 224×224×3); a set that would need more
  is refused before decoding, so thousands of tiny files cannot blow up to
  gigabytes.
- ``TLVIZ_MAX_IMAGE_PIXELS`` — pixels in one image (default 40,000,000); larger
  images are treated as decompression bombs and skipped without being decoded.
  Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, twice of which is a hard
  error) applies on top.

Server folders (the app's "Server folder" option reads a folder on the machine
tlviz runs on): ``TLVIZ_IMAGE_ROOTS`` lists the folders it may read, separated
by ``:`` (``os.pathsep``); ``off`` turns the option off; unset, any folder
the server can read is allowed, which suits a laptop but not a shared server.
See `check_server_folder`.

What is promised for untrusted uploads:

- Nothing is ever extracted or written to disk: archive entries are read into
  memory one at a time, and each read stops at the size the entry declares
  (then the CRC is checked), so a header that understates its size gives a
  skipped "corrupt" entry, never an unbounded read. bzip2 and LZMA entries are
  decompressed here with that bound, since `zipfile` does not bound them.
- An archive with an absolute path, a ``..`` component or a symbolic-link entry
  is refused as a whole.
- Archives inside the archive are listed as skipped, never opened.
- Only the PNG, JPEG, BMP, GIF and WebP decoders run, whatever a file is named:
  Pillow's other plugins (EPS through Ghostscript, TIFF...) are never reached.
- In a folder, symbolic links and anything that is not a regular file (FIFOs,
  devices, sockets) are skipped without being opened; hidden folders are ignored.

Class names keep spaces and non-ASCII letters; they are NFC-normalised (as is
``labels.txt``, read one name per line or in Teachable Machine's ``0 name`` spelling:
`tlviz.labels`), and zip names written as UTF-8 without the UTF-8 flag (macOS,
Info-ZIP) are read as UTF-8, others as cp437.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from tlviz.errors import ImageSetRefused
from tlviz.labels import parse_labels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
ARCHIVE_EXTENSIONS = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz", ".zst", ".lz",
                      ".lzma", ".7z", ".rar", ".cab", ".jar", ".whl", ".npz")
RESIZE_METHODS = ("bilinear", "nearest", "area", "crop")
RESIZE_DESCRIPTIONS = {
    "bilinear": "bilinear resize (the Keras / tf.image default)",
    "nearest": "nearest-neighbour resize",
    "area": "area (box) resize",
    "crop": "centre crop to a square, then bilinear resize",
}

# Reasons shown in `ImageSet.skipped` (tests and pages may match on them).
REASON_NESTED_ARCHIVE = "archive inside the archive: not opened; unzip it and add its class folders"
REASON_NESTED_ARCHIVE_FOLDER = "archive inside the image folder: not opened; unzip it and add its class folders"
REASON_EMPTY_CLASS = "empty class folder: ignored"
REASON_NO_IMAGES_IN_CLASS = "class folder holds no image files: ignored"
REASON_LISTED_EMPTY = "listed in labels.txt but no images found (class kept, 0 images)"

_PIL_FILTERS = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "area": Image.BOX, "crop": Image.BILINEAR}
# The only Pillow decoders that run (the JPEG one also opens multi-picture camera JPEGs as MPO).
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "WEBP")
_IGNORED_NAMES = {"labels.txt", ".DS_Store", "Thumbs.db", "desktop.ini"}
_MAX_LABELS_BYTES = 1024 * 1024
# File signatures of formats that are not decoded, to name them in the skip reason.
_OTHER_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive", 0), (b"PK\x05\x06", "a zip archive", 0), (b"\x1f\x8b", "a gzip archive", 0),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", 0), (b"Rar!", "a RAR archive", 0), (b"ustar", "a tar archive", 257),
    (b"II*\x00", "a TIFF image", 0), (b"MM\x00*", "a TIFF image", 0), (b"%PDF", "a PDF document", 0),
    (b"%!PS", "a PostScript/EPS file", 0), (b"\xc5\xd0\xd3\xc6", "a PostScript/EPS file", 0),
    (b"8BPS", "a Photoshop file", 0), (b"ftypheic", "a HEIC image", 4), (b"ftypheix", "a HEIC image", 4),
    (b"ftypmif1", "a HEIF image", 4), (b"ftypavif", "an AVIF image", 4), (b"\x00\x00\x01\x00", "an icon file", 0),
)


def _env_int(name: str, default: int) -> int:
    try:
        return int(float(os.environ.get(name, default)))
    except ValueError:
        return default


def max_archive_entries() -> int:
    """Most entries in a `.zip` (or files under a folder); ``TLVIZ_MAX_ARCHIVE_ENTRIES``."""
    return _env_int("TLVIZ_MAX_ARCHIVE_ENTRIES", 50_000)


def max_archive_bytes() -> int:
    """Most uncompressed bytes a `.zip`'s entries may declare; ``TLVIZ_MAX_ARCHIVE_MB``."""
    return _env_int("TLVIZ_MAX_ARCHIVE_MB", 2048) * 1024 * 1024


def max_image_bytes() -> int:
    """Most bytes of one image file; ``TLVIZ_MAX_IMAGE_MB`` (default 100 MB)."""
    return _env_int("TLVIZ_MAX_IMAGE_MB", 100) * 1024 * 1024


def max_decoded_bytes() -> int:
    """Most bytes the decoded ``uint8`` set may take; ``TLVIZ_MAX_DECODED_MB`` (default 4,096 MB)."""
    return _env_int("TLVIZ_MAX_DECODED_MB", 4096) * 1024 * 1024


def max_image_pixels() -> int:
    """Most pixels in one image; ``TLVIZ_MAX_IMAGE_PIXELS``."""
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

    def class_warnings(self) -> list[str]:
        """What about the classes stops fine-tuning or accuracy checks, as user-facing sentences.

        Returns:
            An empty list when every class has at least two images and there are
            at least two classes; otherwise one sentence per problem (a single
            class, classes with no images, classes with one image).
        """
        counts = self.counts
        out = []
        present = [c for c, n in counts.items() if n > 0]
        if len(present) < 2:
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
class _Entry:
    rel: str  # path relative to the image-set root, posix style
    cls: str
    read: object  # callable returning bytes; raises _SkipImage with a reason


class _SkipImage(Exception):
    pass


# -- sources -----------------------------------------------------------------

class ImageSource:
    """Where an image set comes from; can be decoded again at another size.

    Create with `ImageSource.from_folder` or `ImageSource.from_zip`. Archive
    safety checks run at creation, so a hostile archive is refused before any
    image is decoded. Nothing is ever extracted to disk.

    Attributes:
        name: the folder path or the archive's name.
        origin: what opens it again in another process: ``("folder", path)``,
            ``("zip", bytes)``, or None for a source built by hand.
    """

    def __init__(self, name: str, entries: list[_Entry], labels_txt: str | None, skipped: list[Skipped],
                 empty_classes: dict[str, str] | None = None, origin: tuple | None = None):
        self.name = name
        self.origin = origin
        self._entries = entries
        self._labels_txt = labels_txt
        self._skipped = skipped
        self._empty_classes = dict(empty_classes or {})

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ImageSource:
        """A folder with one sub-folder per class (and optionally ``labels.txt``).

        Symbolic links and non-regular files are listed as skipped and never
        opened; hidden files and folders are ignored.

        Raises:
            ImageSetRefused: the folder does not exist or holds more files than
                ``TLVIZ_MAX_ARCHIVE_ENTRIES``.
        """
        root = Path(folder)
        if not root.is_dir():
            raise ImageSetRefused(f"Image folder not found: {root}. Give a folder with one sub-folder per class.")
        entries, skipped, labels_txt = [], [], None
        files_per_class: dict[str, int] = {}
        images_per_class: Counter = Counter()
        limit = max_archive_entries()
        for rel, kind, path in _walk_folder(root, limit):
            top = rel.split("/", 1)[0]
            if kind == "dir":
                if "/" not in rel:
                    files_per_class.setdefault(top, 0)
                continue
            if "/" in rel and rel.rsplit("/", 1)[-1] not in _IGNORED_NAMES:
                files_per_class[top] = files_per_class.get(top, 0) + 1
            if kind == "symlink":
                skipped.append(Skipped(rel, "symbolic link: not followed"))
                continue
            if kind == "special":
                skipped.append(Skipped(rel, "not a regular file (FIFO, device or socket): not opened"))
                continue
            if kind == "unreadable":
                skipped.append(Skipped(rel, "folder could not be read (permissions?): its files were not loaded"))
                continue
            if rel == "labels.txt":
                labels_txt = _read_labels(lambda p=path: _read_file(p, _MAX_LABELS_BYTES, labels=True), str(root))
                continue
            c = _classify(rel, skipped, REASON_NESTED_ARCHIVE_FOLDER)
            if c is not None:
                images_per_class[c] += 1
                entries.append(_Entry(rel, c, (lambda p=path: _read_file(p, max_image_bytes()))))
        return cls(str(root), entries, labels_txt, skipped, _empty_classes(files_per_class, images_per_class),
                   origin=("folder", str(root)))

    @classmethod
    def from_zip(cls, data: bytes, name: str = "upload.zip") -> ImageSource:
        """A `.zip` of class folders (optionally wrapped in one folder, with ``labels.txt``).

        Raises:
            ImageSetRefused: not a zip; over the entry or size limits; an entry
                with an absolute path, ``..`` or a symbolic link.
        """
        declared = _declared_entry_count(data)
        if declared is not None and declared > max_archive_entries():
            raise _too_many_entries(name, declared)
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise ImageSetRefused(f"{name} is not a readable zip archive ({exc}). Zip the class folders again.") from None
        if len(infos) > max_archive_entries():
            raise _too_many_entries(name, len(infos))
        total = sum(i.file_size for i in infos)
        if total > max_archive_bytes():
            raise ImageSetRefused(
                f"{name} unpacks to {total / 1e6:,.0f} MB, over the limit of "
                f"{max_archive_bytes() / 1024 / 1024:,.0f} MB (possible zip bomb). Upload a smaller sample, or "
                "raise TLVIZ_MAX_ARCHIVE_MB."
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
        named = [(_entry_name(i), i) for i in infos]
        named = [(n, i) for n, i in named if n and not _hidden(n)]
        prefix = _common_root([n for n, i in named if not n.endswith("/")])
        entries, skipped, labels_txt = [], [], None
        files_per_class: dict[str, int] = {}
        images_per_class: Counter = Counter()
        for full, info in named:
            if not full.startswith(prefix):
                continue  # a folder beside the wrapping folder, with no files
            rel = full[len(prefix):]
            if not rel:
                continue
            top = rel.split("/", 1)[0]
            if full.endswith("/"):  # a folder entry (`info.is_dir()` misses Windows separators)
                files_per_class.setdefault(top, 0)
                continue
            if "/" in rel and rel.rsplit("/", 1)[-1] not in _IGNORED_NAMES:
                files_per_class[top] = files_per_class.get(top, 0) + 1
            if rel == "labels.txt":
                labels_txt = _read_labels(
                    lambda i=info: _read_zip_entry(zf, i, _MAX_LABELS_BYTES, labels=True, archive=data), name)
                continue
            c = _classify(rel, skipped, REASON_NESTED_ARCHIVE)
            if c is not None:
                images_per_class[c] += 1
                entries.append(_Entry(rel, c, (lambda i=info: _read_zip_entry(zf, i, max_image_bytes(), archive=data))))
        entries.sort(key=lambda e: e.rel)
        return cls(name, entries, labels_txt, skipped, _empty_classes(files_per_class, images_per_class),
                   origin=("zip", data))

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
        wanted = []
        for entry in self._entries:
            if entry.cls in index:
                wanted.append(entry)
            else:
                skipped.append(Skipped(entry.rel, f"class folder '{entry.cls}' is not listed in labels.txt"))
        need = len(wanted) * h * w * channels
        if need > max_decoded_bytes():
            raise ImageSetRefused(
                f"{self.name} holds {len(wanted):,} images: decoded at {h}×{w}×{channels} they need "
                f"{need / 2**20:,.0f} MB of memory, over the limit of {max_decoded_bytes() / 2**20:,.0f} MB. "
                "Load a smaller sample, or raise TLVIZ_MAX_DECODED_MB.")
        images = np.empty((len(wanted), h, w, channels), dtype=np.uint8)
        labels, files, sizes, modes = [], [], [], Counter()
        n = 0

        def work(entry):
            try:
                return decode_image(entry.read(), size, channels, resize)
            except _SkipImage as exc:
                return str(exc)
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop the batch
                return f"could not be read or decoded ({type(exc).__name__}: {str(exc)[:120]})"

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
        """The raw bytes of one image by its relative path.

        Raises:
            KeyError: no image with that path.
            ValueError: the file cannot be read (the message says why).
        """
        for e in self._entries:
            if e.rel == rel:
                try:
                    return e.read()
                except _SkipImage as exc:
                    raise ValueError(f"{rel}: {exc}") from None
        raise KeyError(rel)

    def _class_names(self) -> tuple[list[str], bool, list[Skipped]]:
        skipped = list(self._skipped)
        found = sorted({e.cls for e in self._entries})
        listed = None
        if self._labels_txt is not None:
            listed = parse_labels(self._labels_txt)
        for c, reason in sorted(self._empty_classes.items()):
            if listed is None or c not in listed:
                skipped.append(Skipped(f"{c}/", reason))
        if not found:
            empty = sorted(self._empty_classes)
            detail = f" The class folders {', '.join(c + '/' for c in empty[:5])} hold no image files." if empty else ""
            raise ImageSetRefused(
                f"No class folders with images found in {self.name}.{detail} Put the images in one sub-folder "
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


def _too_many_entries(name: str, n: int) -> ImageSetRefused:
    return ImageSetRefused(
        f"{name} has {n:,} entries, over the limit of {max_archive_entries():,}. "
        "Upload a smaller sample, or raise TLVIZ_MAX_ARCHIVE_ENTRIES."
    )


def _declared_entry_count(data: bytes) -> int | None:
    """The entry count a zip's end-of-central-directory record declares, or None.

    Read before `zipfile` parses the entry list, so an archive with millions of
    entries is refused without building millions of objects. (A record that
    understates the count is caught after parsing.)
    """
    try:
        pos = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65535))
        if pos < 0 or pos + 22 > len(data):
            return None
        count = struct.unpack_from("<H", data, pos + 10)[0]
        if count != 0xFFFF or pos < 20:
            return count
        loc = data[pos - 20:pos]
        if loc[:4] != b"PK\x06\x07":
            return count
        offset = struct.unpack_from("<Q", loc, 8)[0]
        if data[offset:offset + 4] != b"PK\x06\x06":
            return count
        return int(struct.unpack_from("<Q", data, offset + 32)[0])
    except (struct.error, ValueError):
        return None


def _entry_name(info: zipfile.ZipInfo) -> str:
    """An entry's name as the archiver meant it, posix separators.

    Names without the UTF-8 flag are decoded as cp437 by `zipfile`; many tools
    (macOS, Linux `zip`) write UTF-8 without setting the flag, so such a name is
    re-read as UTF-8 when its bytes are valid UTF-8. Windows separators become ``/``.
    """
    name = info.filename
    if not info.flag_bits & 0x800 and not name.isascii():
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name.replace("\\", "/")


def _read_zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, labels: bool = False,
                    archive: bytes | None = None) -> bytes:
    """Read one entry into memory, never more than its declared size (itself at most `cap`).

    Stored and deflated entries go through `zipfile`, asked for ``file_size + 1``
    bytes: it stops at the declared size and checks the CRC, so an entry whose
    data is longer than its header says is reported as corrupt. `zipfile`
    decompresses bzip2 and LZMA without an output bound (a few KB of bzip2 can
    expand to GB), so those are decoded here from the archive's bytes, with it.
    """
    if info.file_size > cap:
        raise _oversize(info.file_size, cap, labels)
    if info.flag_bits & 0x1:
        raise _SkipImage("encrypted entry: password-protected archives are not supported; zip it without a password")
    try:
        if info.compress_type in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
            if archive is None:
                raise _SkipImage("compressed with bzip2 or LZMA: not read; zip it again with the default (deflate) "
                                 "compression")
            data = _read_bounded(archive, info)
        else:
            with zf.open(info) as f:
                data = f.read(info.file_size + 1)
    except _SkipImage:
        raise
    except NotImplementedError as exc:
        raise _SkipImage(f"compressed with a method Python cannot read ({exc}); zip it again with the default "
                         "(deflate) compression") from None
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, RuntimeError,
            struct.error) as exc:
        raise _SkipImage("corrupt archive entry (its data does not match its header: "
                         f"{str(exc)[:100]}); zip it again") from None
    if len(data) > info.file_size:  # cannot happen with zipfile; kept as a last bound
        raise _SkipImage("corrupt archive entry (more data than its header declares); zip it again")
    return data


def _read_bounded(archive: bytes, info: zipfile.ZipInfo) -> bytes:
    """A bzip2 or LZMA entry, decompressed to at most ``file_size + 1`` bytes and CRC-checked."""
    off = info.header_offset
    if archive[off:off + 4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    n_name, n_extra = struct.unpack_from("<HH", archive, off + 26)
    start = off + 30 + n_name + n_extra
    raw = archive[start:start + info.compress_size]
    if info.compress_type == zipfile.ZIP_BZIP2:
        dec = bz2.BZ2Decompressor()
    else:  # zip's LZMA: version (2 bytes), properties size (2), properties (5), raw LZMA1 stream
        n_props = struct.unpack_from("<H", raw, 2)[0]
        props = raw[4:4 + n_props]
        if n_props != 5 or len(props) != 5:
            raise zipfile.BadZipFile("bad LZMA properties")
        lc, lp, pb = props[0] % 9, (props[0] // 9) % 5, props[0] // 45
        # The window never needs to exceed the output, and a hostile header could ask for 4 GB.
        dict_size = min(struct.unpack_from("<L", props, 1)[0], max(4096, info.file_size + 1))
        dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
            {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}])
        raw = raw[4 + n_props:]
    out = dec.decompress(raw, max_length=info.file_size + 1)
    if len(out) != info.file_size:
        raise zipfile.BadZipFile(f"size mismatch: the header says {info.file_size:,} bytes")
    if zlib.crc32(out) != info.CRC:
        raise zipfile.BadZipFile("bad CRC-32")
    return out


def _read_file(path: Path, cap: int, labels: bool = False) -> bytes:
    """Read a regular file, refusing links and special files, never more than `cap` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise _SkipImage("symbolic link: not followed") from None
        raise _SkipImage(f"could not be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        st_ = os.fstat(f.fileno())
        if not stat.S_ISREG(st_.st_mode):
            raise _SkipImage("not a regular file (FIFO, device or socket): not opened")
        if st_.st_size > cap:
            raise _oversize(st_.st_size, cap, labels)
        # Ask for the size fstat gave, not for `cap`: a read of n bytes allocates n up front.
        want = min(cap, st_.st_size) + 1
        data = f.read(want)
        if len(data) == want and want <= cap:  # it grew since fstat: read on, still bounded
            data += f.read(cap + 1 - len(data))
    if len(data) > cap:
        raise _oversize(len(data), cap, labels)
    return data


def _oversize(n: int, cap: int, labels: bool) -> Exception:
    if labels:
        return ImageSetRefused(f"labels.txt is {n / 1e6:,.1f} MB; it should list one class name per line "
                               f"(at most {cap // 1024:,} KB). Fix labels.txt and load the set again.")
    return _SkipImage(f"{n / 1024 / 1024:,.1f} MB is over the per-image limit of {cap // 1024 // 1024:,} MB: "
                      "not read (shrink the image, or raise TLVIZ_MAX_IMAGE_MB)")


def _read_labels(read, name: str) -> str:
    """The text of labels.txt; a labels file that cannot be read refuses the set (the class order depends on it)."""
    try:
        data = read()
    except _SkipImage as exc:
        raise ImageSetRefused(f"labels.txt in {name} could not be read: {exc}. Fix labels.txt, or remove it to "
                              "use the sorted folder names.") from None
    return data.decode("utf-8-sig", errors="replace")


def _walk_folder(root: Path, limit: int):
    """Yield ``(rel, kind, path)`` under `root`, sorted, never following links.

    `kind` is ``"dir"``, ``"file"``, ``"symlink"``, ``"special"`` or
    ``"unreadable"`` (a sub-folder that could not be listed). Hidden
    entries and ``__MACOSX`` are left out.

    Raises:
        ImageSetRefused: more than `limit` files.
    """
    count = 0
    stack = [(root, "")]
    out = []
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not prefix:
                raise ImageSetRefused(f"Cannot read the folder {folder} ({exc.strerror or exc}). "
                                      "Check its permissions.") from None
            out.append((prefix, "unreadable", folder))
            continue
        subdirs = []
        for e in items:
            if e.name.startswith(".") or e.name == "__MACOSX":
                continue
            rel = prefix + e.name
            if e.is_symlink():
                kind = "symlink"
            elif e.is_dir(follow_symlinks=False):
                kind = "dir"
                subdirs.append((Path(e.path), rel + "/"))
            elif e.is_file(follow_symlinks=False):
                kind = "file"
            else:
                kind = "special"
            if kind != "dir":
                count += 1
                if count > limit:
                    raise ImageSetRefused(
                        f"{root} holds more than {limit:,} files. Point at a smaller folder, or raise "
                        "TLVIZ_MAX_ARCHIVE_ENTRIES.")
            out.append((rel, kind, Path(e.path)))
        stack.extend(reversed(subdirs))
    return sorted(out, key=lambda t: t[0])


def _empty_classes(files_per_class: dict[str, int], images_per_class: Counter) -> dict[str, str]:
    """Class folders to report: with no files at all, or with files but no image files."""
    out = {}
    for c, nfiles in files_per_class.items():
        key = unicodedata.normalize("NFC", c)
        if images_per_class.get(key, 0):
            continue
        out[key] = REASON_EMPTY_CLASS if nfiles == 0 else REASON_NO_IMAGES_IN_CLASS
    return out


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


def _classify(rel: str, skipped: list[Skipped], archive_reason: str = REASON_NESTED_ARCHIVE) -> str | None:
    """The class of an image path, or None (with a `Skipped` added when worth telling)."""
    parts = rel.split("/")
    name = parts[-1]
    if name in _IGNORED_NAMES or name.startswith("."):
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


def _what_is_it(data: bytes) -> str:
    """A skip reason for bytes no allowed decoder recognised."""
    for sig, what, at in _OTHER_SIGNATURES:
        if data[at:at + len(sig)] == sig:
            if "archive" in what:
                return f"not an image: the file is {what} named like an image; not opened"
            return f"unsupported format: the file is {what}; convert it to PNG or JPEG"
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and b"\x00" not in head and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "not an image: the file holds text, not image data"
    return "not a readable image: unknown format or corrupt header (supported: PNG, JPEG, BMP, GIF, WebP)"


def decode_image(data: bytes, size: tuple[int, int], channels: int = 3,
                 resize: str = "bilinear") -> tuple[np.ndarray, tuple[int, int], str]:
    """Decode one image to ``uint8`` ``(H, W, channels)``.

    Only the PNG, JPEG, BMP, GIF and WebP decoders are tried. The pixel count is
    checked from the header before any pixel is decoded. Grayscale, RGBA
    (composited on white), palette (with transparency), CMYK and 16-bit images
    are converted. Raises `_SkipImage` with a reason for unusable data.

    Returns:
        ``(array, (orig_width, orig_height), orig_mode)``.
    """
    if not data:
        raise _SkipImage("empty file (0 bytes)")
    limit = max_image_pixels()
    try:
        img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
        w0, h0 = img.size
        if w0 * h0 > limit:
            raise _SkipImage(f"{w0}x{h0} pixels is over the limit of {limit:,} (possible decompression bomb): "
                             "not decoded (raise TLVIZ_MAX_IMAGE_PIXELS to allow it)")
        mode = img.mode
        img.load()
    except _SkipImage:
        raise
    except Image.DecompressionBombError as exc:
        raise _SkipImage(f"over Pillow's pixel limit (possible decompression bomb): not decoded ({exc})") from None
    except Image.UnidentifiedImageError:
        raise _SkipImage(_what_is_it(data)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, MemoryError) as exc:
        text = str(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise _SkipImage("truncated image file (the data ends early): export or download it again") from None
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


ENV_IMAGE_ROOTS = "TLVIZ_IMAGE_ROOTS"


def server_folder_roots() -> list[Path] | None:
    """The folders the app may read image sets from (``TLVIZ_IMAGE_ROOTS``).

    Returns:
        None when unset (any folder is allowed), ``[]`` when set to ``off`` or
        empty (the option is off), else the resolved roots.
    """
    raw = os.environ.get(ENV_IMAGE_ROOTS)
    if raw is None:
        return None
    if raw.strip().lower() in ("", "off", "none"):
        return []
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def check_server_folder(folder: str | os.PathLike) -> Path:
    """Resolve a folder typed by a user and check that the server may read it.

    Links and ``..`` are resolved first, so a path cannot climb out of an
    allowed root.

    Returns:
        The resolved folder.

    Raises:
        ImageSetRefused: server folders are off, or the folder is outside every
            allowed root.
    """
    roots = server_folder_roots()
    path = Path(folder).expanduser().resolve()
    if roots is None:
        return path
    if not roots:
        raise ImageSetRefused(f"Reading folders on the server is turned off here ({ENV_IMAGE_ROOTS}=off). "
                              "Upload the image set as a .zip instead.")
    if not any(path == r or r in path.parents for r in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ImageSetRefused(f"{path} is outside the folders this server shares ({allowed}). Pick a folder "
                              f"under one of them, or upload the image set as a .zip.")
    return path
