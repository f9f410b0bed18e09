"""Image sets in a folder: walking it without following links, bounded reads, server folders.

- `list_folder(root)` lists the class folders, images and ``labels.txt`` under a folder;
  symbolic links and anything that is not a regular file (FIFOs, devices, sockets) are listed
  as skipped and never opened; hidden folders and ``__MACOSX`` are ignored.
- `_read_file(path, cap)` reads one regular file, never more than `cap` bytes.
- `server_folder_roots()` / `check_server_folder(folder)`: the folders on the server that the
  app's "Server folder" option may read (``TLVIZ_IMAGE_ROOTS``).
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

from tlviz import config
from tlviz.errors import ImageSetRefused, ImageSkipped
from tlviz.imagesets.imageset import (
    IGNORED_NAMES,
    MAX_LABELS_BYTES,
    REASON_NESTED_ARCHIVE_FOLDER,
    Skipped,
    classify_path,
    find_empty_classes,
    Entry,
    Listing,
    read_labels,
)
from tlviz.imagesets.limits import oversize, max_archive_entries


def list_folder(root: Path) -> Listing:
    """The images (by class folder), ``labels.txt`` and skipped files under `root`.

    Raises:
        ImageSetRefused: `root` holds more files than ``TLVIZ_MAX_ARCHIVE_ENTRIES``, cannot be
            read, or its ``labels.txt`` cannot be read.
    """
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
        if "/" in rel and rel.rsplit("/", 1)[-1] not in IGNORED_NAMES:
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
            labels_txt = read_labels(lambda p=path: _read_file(p, MAX_LABELS_BYTES, labels=True), str(root))
            continue
        c = classify_path(rel, skipped, REASON_NESTED_ARCHIVE_FOLDER)
        if c is not None:
            images_per_class[c] += 1
            entries.append(Entry(rel, c, (lambda cap, p=path: _read_file(p, cap))))
    return Listing(entries, labels_txt, skipped, find_empty_classes(files_per_class, images_per_class))


def _read_file(path: Path, cap: int, labels: bool = False) -> bytes:
    """Read a regular file, refusing links and special files, never more than `cap` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise ImageSkipped("symbolic link: not followed") from None
        raise ImageSkipped(f"could not be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        st_ = os.fstat(f.fileno())
        if not stat.S_ISREG(st_.st_mode):
            raise ImageSkipped("not a regular file (FIFO, device or socket): not opened")
        if st_.st_size > cap:
            raise oversize(st_.st_size, cap, labels)
        # Ask for the size fstat gave, not for `cap`: a read of n bytes allocates n up front.
        want = min(cap, st_.st_size) + 1
        data = f.read(want)
        if len(data) == want and want <= cap:  # it grew since fstat: read on, still bounded
            data += f.read(cap + 1 - len(data))
    if len(data) > cap:
        raise oversize(len(data), cap, labels)
    return data


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


ENV_IMAGE_ROOTS = "TLVIZ_IMAGE_ROOTS"


def server_folder_roots() -> list[Path] | None:
    """The folders the app may read image sets from (``TLVIZ_IMAGE_ROOTS``).

    Returns:
        None when unset (any folder is allowed), ``[]`` when set to ``off`` or
        empty (the option is off), else the resolved roots.
    """
    return config.paths(ENV_IMAGE_ROOTS)


def check_server_folder(folder: str | os.PathLike) -> Path:
    """Resolve a folder typed by a user and check that the server may read it.

    Links and ``..`` are resolved first, so a path cannot climb out of an
    allowed root.

    Args:
        folder: the folder as typed.

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
