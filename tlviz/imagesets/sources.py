"""Where an image set comes from, and decoding it: `ImageSource`, `open_source`, `load_image_set`.

An `ImageSource` is made from a folder (`ImageSource.from_folder`) or a `.zip`'s bytes
(`ImageSource.from_zip`). The safety checks run when it is made, so a hostile archive is
refused as a whole before any image is decoded; `ImageSource.load` then decodes every image
at the model's input size (threads, since Pillow releases the GIL) into an `ImageSet`.
Listing a folder is `tlviz.imagesets.folders`' part, the details of a `.zip`
`tlviz.imagesets.archives`', decoding one image `tlviz.imagesets.decoding`'.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tlviz.errors import ImageSetRefused, ImageSkipped
from tlviz.imagesets.archives import check_entry_paths, declared_entry_count, list_zip
from tlviz.imagesets.decoding import ORIENTATIONS, RESIZE_METHODS, PIL_FORMATS, decode_image, exif_orientation
from tlviz.imagesets.folders import list_folder
from tlviz.imagesets.imageset import IMAGE_EXTENSIONS, ImageSet, Skipped, class_order, Entry
from tlviz.imagesets.limits import (
    too_many_entries,
    max_archive_bytes,
    max_archive_entries,
    max_decoded_bytes,
    max_image_bytes,
)


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

    def __init__(self, name: str, entries: list[Entry], labels_txt: str | None, skipped: list[Skipped],
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

        Args:
            folder: the folder's path.

        Returns:
            The `ImageSource`.

        Raises:
            ImageSetRefused: the folder does not exist or holds more files than
                ``TLVIZ_MAX_ARCHIVE_ENTRIES``.
        """
        root = Path(folder)
        if not root.is_dir():
            raise ImageSetRefused(f"Image folder not found: {root}. Give a folder with one sub-folder per class.")
        listing = list_folder(root)
        return cls(str(root), listing.entries, listing.labels_txt, listing.skipped, listing.empty_classes,
                   origin=("folder", str(root)))

    @classmethod
    def from_zip(cls, data: bytes, name: str = "upload.zip") -> ImageSource:
        """A `.zip` of class folders (optionally wrapped in one folder, with ``labels.txt``).

        Args:
            data: the archive's bytes.
            name: its name, for messages. Defaults to `"upload.zip"`.

        Returns:
            The `ImageSource`.

        Raises:
            ImageSetRefused: not a zip; over the entry or size limits; an entry
                with an absolute path, ``..`` or a symbolic link.
        """
        declared = declared_entry_count(data)
        if declared is not None and declared > max_archive_entries():
            raise too_many_entries(name, declared)
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise ImageSetRefused(f"{name} is not a readable zip archive ({exc}). Zip the class folders again.") from None
        if len(infos) > max_archive_entries():
            raise too_many_entries(name, len(infos))
        total = sum(i.file_size for i in infos)
        if total > max_archive_bytes():
            raise ImageSetRefused(
                f"{name} unpacks to {total / 1e6:,.0f} MB, over the limit of "
                f"{max_archive_bytes() / 1024 / 1024:,.0f} MB (possible zip bomb). Upload a smaller sample, or "
                "raise TLVIZ_MAX_ARCHIVE_MB."
            )
        check_entry_paths(infos, name)
        listing = list_zip(zf, infos, data, name)
        return cls(name, listing.entries, listing.labels_txt, listing.skipped, listing.empty_classes,
                   origin=("zip", data))

    def load(self, size: tuple[int, int], channels: int = 3, resize: str = "bilinear",
             progress=None, *, orientation: str = "ignore", only=None) -> ImageSet:
        """Decode every image at `size` with `channels` channels.

        Args:
            size: ``(height, width)``.
            channels: 1 or 3. Defaults to `3`.
            resize: one of `RESIZE_METHODS`. Defaults to `"bilinear"`.
            progress: optional callable ``progress(done, total)``.
            orientation: ``"ignore"`` keeps each image's pixels as stored, as Keras's ``load_img``
                and ``image_dataset_from_directory`` do; ``"apply"`` turns each image the way its
                EXIF orientation says (as a phone shows it). Either way the orientations are
                recorded (`ImageSet.orientations`). Defaults to `"ignore"`.
            only: decode only these files (paths as in `ImageSet.files`), e.g. the images whose
                orientation is not "normal". Defaults to all.

        Returns:
            An `ImageSet`; files that could not be used are in its `skipped` list.

        Raises:
            ImageSetRefused: when no class folder or no usable image is found.
        """
        if resize not in RESIZE_METHODS:
            raise ValueError(f"Unknown resize method {resize!r}. Use one of: {', '.join(RESIZE_METHODS)}.")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {channels}.")
        if orientation not in ORIENTATIONS:
            raise ValueError(f"Unknown orientation {orientation!r}. Use one of: {', '.join(ORIENTATIONS)}.")
        class_names, order_from_file, skipped = class_order(self._entries, self._labels_txt,
                                                             self._empty_classes, self._skipped, self.name)
        index = {c: i for i, c in enumerate(class_names)}
        h, w = size
        wanted = []
        only = None if only is None else set(only)
        for entry in self._entries:
            if only is not None and entry.rel not in only:
                continue
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
        labels, files, sizes, modes, turns = [], [], [], Counter(), []
        n = 0

        def work(entry):
            try:
                return decode_image(entry.read(max_image_bytes()), size, channels, resize, orientation,
                                    with_orientation=True)
            except ImageSkipped as exc:
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
                    arr, orig_size, mode, turned = out
                    images[n] = arr
                    n += 1
                    labels.append(index[entry.cls])
                    files.append(entry.rel)
                    sizes.append(orig_size)
                    modes[mode] += 1
                    turns.append(int(turned))
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
            orientations=turns,
            orientation=orientation,
        )

    def orientations(self, files=None) -> dict[str, int]:
        """The EXIF orientation of each image file, read from its header (no pixel is decoded).

        Args:
            files: the paths (as in `ImageSet.files`) to read. Defaults to every image file.

        Returns:
            ``{path: orientation}`` (1 to 8, 1 = "normal"); a file that cannot be read or holds
            no orientation counts as "normal".
        """
        from PIL import Image

        wanted = None if files is None else set(files)
        out = {}
        for entry in self._entries:
            if wanted is not None and entry.rel not in wanted:
                continue
            try:
                with Image.open(io.BytesIO(entry.read(max_image_bytes())), formats=PIL_FORMATS) as img:
                    out[entry.rel] = exif_orientation(img)
            except Exception:  # noqa: BLE001 - an unreadable file is skipped when decoded; here it is "normal"
                out[entry.rel] = 1
        return out

    def read_bytes(self, rel: str) -> bytes:
        """The raw bytes of one image by its relative path.

        Args:
            rel: the path as in `ImageSet.files`.

        Returns:
            The file's bytes (at most ``TLVIZ_MAX_IMAGE_MB``).

        Raises:
            KeyError: no image with that path.
            ValueError: the file cannot be read (the message says why).
        """
        for e in self._entries:
            if e.rel == rel:
                try:
                    return e.read(max_image_bytes())
                except ImageSkipped as exc:
                    raise ValueError(f"{rel}: {exc}") from None
        raise KeyError(rel)


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
    """An `ImageSource` for a folder path, a `.zip` path or `.zip` bytes.

    Args:
        source: a folder, the path of a `.zip`, or a `.zip` file's bytes.
        name: display name for bytes. Defaults to `"upload.zip"`.

    Returns:
        The `ImageSource` (safety checks done, nothing decoded yet).

    Raises:
        ImageSetRefused: a file that is not a `.zip`, or a folder or archive refused as a whole.
    """
    if isinstance(source, (bytes, bytearray)):
        return ImageSource.from_zip(bytes(source), name or "upload.zip")
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise ImageSetRefused(f"{path.name} is not a folder or a .zip archive. Give a folder with one "
                                  "sub-folder per class, or a .zip of such a folder.")
        return ImageSource.from_zip(path.read_bytes(), path.name)
    return ImageSource.from_folder(path)
