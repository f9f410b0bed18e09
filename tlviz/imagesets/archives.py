"""Image sets in a `.zip`: the end record, entry names and paths, bounded reads. Nothing is extracted.

- `declared_entry_count(data)` — the entry count the end record declares, read before
  `zipfile` parses the entry list.
- `check_entry_paths(infos, name)` — refuses an archive with an absolute path, a ``..``
  component or a symbolic-link entry.
- `list_zip(zf, infos, data, name)` — the class folders, images and ``labels.txt`` (a folder
  wrapping all class folders is stripped; names are read as the archiver meant them).
- `_read_zip_entry(...)` — one entry into memory, never more than its declared size; bzip2 and
  LZMA entries are decompressed here with that bound, since `zipfile` does not bound them.

Opening the archive and refusing it as a whole (entry count, declared size) is
`ImageSource.from_zip`'s part (`tlviz.imagesets.sources`).
"""

from __future__ import annotations

import bz2
import lzma
import stat
import struct
import zipfile
import zlib
from collections import Counter
from pathlib import PurePosixPath

from tlviz.errors import ImageSetRefused, ImageSkipped
from tlviz.imagesets.imageset import (
    IGNORED_NAMES,
    MAX_LABELS_BYTES,
    REASON_NESTED_ARCHIVE,
    classify_path,
    find_empty_classes,
    Entry,
    Listing,
    read_labels,
)
from tlviz.imagesets.limits import oversize


def declared_entry_count(data: bytes) -> int | None:
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


def check_entry_paths(infos: list[zipfile.ZipInfo], name: str) -> None:
    """Refuse the archive when an entry has an absolute path, a ``..`` component or is a symbolic link.

    Raises:
        ImageSetRefused: naming the entry.
    """
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


def list_zip(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], data: bytes, name: str) -> Listing:
    """The images (by class folder), ``labels.txt`` and skipped entries of an opened archive.

    Args:
        zf: the opened archive.
        infos: its entries (already checked by `check_entry_paths`).
        data: the archive's bytes (bzip2 and LZMA entries are read from them).
        name: the archive's name, for messages.

    Raises:
        ImageSetRefused: its ``labels.txt`` cannot be read.
    """
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
        if "/" in rel and rel.rsplit("/", 1)[-1] not in IGNORED_NAMES:
            files_per_class[top] = files_per_class.get(top, 0) + 1
        if rel == "labels.txt":
            labels_txt = read_labels(
                lambda i=info: _read_zip_entry(zf, i, MAX_LABELS_BYTES, labels=True, archive=data), name)
            continue
        c = classify_path(rel, skipped, REASON_NESTED_ARCHIVE)
        if c is not None:
            images_per_class[c] += 1
            entries.append(Entry(rel, c, (lambda cap, i=info: _read_zip_entry(zf, i, cap, archive=data))))
    entries.sort(key=lambda e: e.rel)
    return Listing(entries, labels_txt, skipped, find_empty_classes(files_per_class, images_per_class))


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
        raise oversize(info.file_size, cap, labels)
    if info.flag_bits & 0x1:
        raise ImageSkipped("encrypted entry: password-protected archives are not supported; zip it without a password")
    try:
        if info.compress_type in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
            if archive is None:
                raise ImageSkipped("compressed with bzip2 or LZMA: not read; zip it again with the default (deflate) "
                                 "compression")
            data = _read_bounded(archive, info)
        else:
            with zf.open(info) as f:
                data = f.read(info.file_size + 1)
    except ImageSkipped:
        raise
    except NotImplementedError as exc:
        raise ImageSkipped(f"compressed with a method Python cannot read ({exc}); zip it again with the default "
                         "(deflate) compression") from None
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, RuntimeError,
            struct.error) as exc:
        raise ImageSkipped("corrupt archive entry (its data does not match its header: "
                         f"{str(exc)[:100]}); zip it again") from None
    if len(data) > info.file_size:  # cannot happen with zipfile; kept as a last bound
        raise ImageSkipped("corrupt archive entry (more data than its header declares); zip it again")
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
