"""Hostile and broken image sets (issue 6): each bad file is skipped with its reason, a hostile
archive is refused as a whole before anything is decoded, and nothing is written to disk."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image
from PIL import Image, ImageFile

# The module that reads decode_image, zipfile and the limits while loading (patched below).
from tlviz.imagesets import sources as imagesets
from tlviz.errors import ImageSetRefused
from tlviz.imagesets import (
    REASON_EMPTY_CLASS,
    REASON_LISTED_EMPTY,
    REASON_NESTED_ARCHIVE,
    REASON_NESTED_ARCHIVE_FOLDER,
    REASON_NO_IMAGES_IN_CLASS,
    ImageSource,
    load_image_set,
    open_source,
)

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_models" / "digits_0_4"


# -- builders ------------------------------------------------------------------

def _img_bytes(mode="RGB", size=(16, 16), color=(10, 200, 30), fmt="PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def _noise_jpeg(size=(64, 48)) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _zip(entries: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """A zip from ``{name: bytes}``; a value may be a callable writing into an open entry."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            if callable(data):
                with zf.open(name, "w") as f:
                    data(f)
            else:
                zf.writestr(name, data)
    return buf.getvalue()


def _zeros(n_bytes: int, chunk: int = 1 << 20):
    def write(f):
        block = b"\0" * chunk
        for _ in range(n_bytes // chunk):
            f.write(block)
        f.write(b"\0" * (n_bytes % chunk))
    return write


def _central_entries(data: bytes):
    """``(offset, name_bytes)`` of each central-directory header."""
    eocd = data.rfind(b"PK\x05\x06")
    count, _size, start = struct.unpack_from("<HLL", data, eocd + 10)
    out, pos = [], start
    for _ in range(count):
        assert data[pos:pos + 4] == b"PK\x01\x02"
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        out.append((pos, data[pos + 46:pos + 46 + n]))
        pos += 46 + n + m + k
    return out


def _patch_entry(data: bytes, name: str, *, file_size: int | None = None, flag_or: int = 0) -> bytes:
    """Rewrite an entry's declared uncompressed size and/or flags, in both headers."""
    out = bytearray(data)
    for pos, raw in _central_entries(data):
        if raw.decode("utf-8") != name:
            continue
        local = struct.unpack_from("<L", data, pos + 42)[0]
        if file_size is not None:
            struct.pack_into("<L", out, pos + 24, file_size)
            struct.pack_into("<L", out, local + 22, file_size)
        if flag_or:
            struct.pack_into("<H", out, pos + 8, struct.unpack_from("<H", data, pos + 8)[0] | flag_or)
            struct.pack_into("<H", out, local + 6, struct.unpack_from("<H", data, local + 6)[0] | flag_or)
        return bytes(out)
    raise KeyError(name)


def _png_header_bomb(width: int, height: int) -> bytes:
    """A real 1-bit grayscale PNG of `width` x `height` zero pixels: a few KB on disk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">L", len(body)) + kind + body + struct.pack(">L", zlib.crc32(kind + body))

    ihdr = struct.pack(">LLBBBBB", width, height, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    rows = row * 1000
    idat = b"".join(comp.compress(rows) for _ in range(height // 1000)) + comp.compress(row * (height % 1000))
    idat += comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    return _png_header_bomb(20_000, 20_000)


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture
def no_disk_writes(tmp_path, monkeypatch):
    """Run in an empty working folder, forbid zip extraction, and check afterwards that
    nothing appeared anywhere under the test's temp folder."""
    work = tmp_path / "cwd" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)

    def forbidden(*a, **k):
        raise AssertionError("tlviz must never extract archive entries to disk")

    monkeypatch.setattr(zipfile.ZipFile, "extract", forbidden)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", forbidden)
    before = _tree(tmp_path)
    yield work
    assert _tree(tmp_path) == before, "files were written to disk"


def _reasons(s) -> dict[str, str]:
    return {sk.file: sk.reason for sk in s.skipped}


# -- paths that escape the archive ----------------------------------------------

@pytest.mark.parametrize("evil,match", [
    ("../evil.png", "outside the archive"),
    ("cats/../../evil.png", "outside the archive"),
    ("cats\\..\\..\\evil.png", "outside the archive"),
    ("/etc/x.png", "absolute path"),
    ("/tmp/cats/evil.png", "absolute path"),
    ("C:\\x.png", "absolute path"),
    ("C:/Windows/x.png", "absolute path"),
    ("\\x.png", "absolute path"),
    ("\\\\server\\share\\x.png", "absolute path"),
])
def test_escaping_entry_refuses_the_archive(evil, match, no_disk_writes):
    data = _zip({"cats/1.png": _img_bytes(), "dogs/1.png": _img_bytes(), evil: _img_bytes()})
    with pytest.raises(ImageSetRefused, match=match) as err:
        load_image_set(data, (8, 8), name="evil.zip")
    assert "evil.zip is refused" in str(err.value) and evil in str(err.value)
    assert not (no_disk_writes.parent.parent / "evil.png").exists()


def test_symlink_entry_refuses_the_archive(no_disk_writes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cats/1.png", _img_bytes())
        zf.writestr("dogs/1.png", _img_bytes())
        link = zipfile.ZipInfo("dogs/passwd.png")
        link.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(link, "../../../../etc/passwd")
    with pytest.raises(ImageSetRefused, match="symbolic link"):
        ImageSource.from_zip(buf.getvalue(), "links.zip")


# -- bombs -----------------------------------------------------------------------

def test_zip_bomb_total_size_is_refused_before_decoding(monkeypatch, no_disk_writes):
    monkeypatch.setenv("TLVIZ_MAX_ARCHIVE_MB", "32")
    bomb = _zip({"cats/1.png": _img_bytes(), "dogs/zeros.png": _zeros(64 * 1024 * 1024)})
    assert len(bomb) < 200_000  # tiny archive, 64 MB declared
    decoded = []
    monkeypatch.setattr(imagesets, "decode_image", lambda *a, **k: decoded.append(a) or pytest.fail("decoded"))
    with pytest.raises(ImageSetRefused, match=r"unpacks to 67 MB, over the limit of 32 MB \(possible zip bomb\)"):
        load_image_set(bomb, (8, 8), name="bomb.zip")
    assert decoded == []  # refused from the declared sizes: nothing was decoded (a timing claim is a benchmark's)


def test_entry_over_per_image_limit_is_skipped_unread(monkeypatch):
    assert imagesets.max_image_bytes() == 100 * 1024 * 1024  # the documented default
    monkeypatch.setenv("TLVIZ_MAX_IMAGE_MB", "1")
    data = _zip({"cats/1.png": _img_bytes(), "dogs/1.png": _img_bytes(), "dogs/big.png": _zeros(3 * 1024 * 1024)})
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: opened.append(getattr(name, "filename", name))
                        or real_open(self, name, *a, **k))
    s = load_image_set(data, (8, 8))
    assert len(s) == 2
    assert "3.0 MB is over the per-image limit of 1 MB: not read" in _reasons(s)["dogs/big.png"]
    assert "dogs/big.png" not in opened and "cats/1.png" in opened


def test_file_over_per_image_limit_is_skipped_in_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TLVIZ_MAX_IMAGE_MB", "1")
    write_image(tmp_path / "cats" / "1.png")
    with open(tmp_path / "cats" / "huge.png", "wb") as f:
        f.truncate(5 * 1024 * 1024)  # sparse: 5 MB declared, nothing written
    s = load_image_set(tmp_path, (8, 8))
    assert len(s) == 1 and "over the per-image limit of 1 MB" in _reasons(s)["cats/huge.png"]


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, zipfile.ZIP_STORED],
                         ids=["deflate", "bzip2", "lzma", "stored"])
def test_header_that_understates_its_size_gives_a_corrupt_entry_and_a_bounded_read(method):
    real = (16 if method == zipfile.ZIP_STORED else 48) * 1024 * 1024  # the data really holds 16-48 MB ...
    data = _zip({"cats/1.png": _img_bytes(), "dogs/liar.png": _zeros(real), "dogs/ok.png": _img_bytes()},
                compression=method)
    liar = _patch_entry(data, "dogs/liar.png", file_size=1000)  # ... its headers say 1,000 bytes
    src = ImageSource.from_zip(liar, "liar.zip")  # the declared total is small: accepted
    tracemalloc.start()
    try:
        s = src.load((8, 8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "corrupt archive entry" in _reasons(s)["dogs/liar.png"]
    assert {"cats/1.png", "dogs/ok.png"} <= set(s.files)
    assert peak < 8 * 1024 * 1024, f"reading the lying entry allocated {peak / 1e6:.0f} MB"


def test_archive_with_100000_entries_is_refused_fast(monkeypatch, no_disk_writes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(100_000):
            zf.writestr(f"c/{i}.png", b"")
    data = buf.getvalue()  # over 65,535 entries: Python writes a zip64 end record
    assert imagesets.max_archive_entries() == 50_000
    real_zipfile = zipfile.ZipFile
    with monkeypatch.context() as m:  # the count comes from the end record: the entry list is never parsed
        m.setattr(imagesets.zipfile, "ZipFile", lambda *a, **k: pytest.fail("the entry list was parsed"))
        with pytest.raises(ImageSetRefused, match="has 100,000 entries, over the limit of 50,000"):
            ImageSource.from_zip(data, "many.zip")
    assert imagesets.zipfile.ZipFile is real_zipfile
    # End records that understate the count are caught once the entry list is parsed.
    eocd = data.rfind(b"PK\x05\x06")
    lying = bytearray(data)
    struct.pack_into("<HH", lying, eocd + 8, 10, 10)
    with pytest.raises(ImageSetRefused, match="has 100,000 entries"):
        ImageSource.from_zip(bytes(lying), "many.zip")
    zip64 = data.rfind(b"PK\x06\x06")
    struct.pack_into("<QQ", lying, zip64 + 24, 10, 10)
    with pytest.raises(ImageSetRefused, match="has 100,000 entries"):
        ImageSource.from_zip(bytes(lying), "many.zip")


def test_many_tiny_images_cannot_blow_up_to_gigabytes(monkeypatch, no_disk_writes):
    dot = _img_bytes(size=(1, 1))
    data = _zip({f"c{i % 2}/{i}.png": dot for i in range(30_000)}, compression=zipfile.ZIP_STORED)
    assert len(data) < 8_000_000 and imagesets.max_decoded_bytes() == 4096 * 2**20
    monkeypatch.setattr(imagesets, "decode_image", lambda *a, **k: pytest.fail("decoded"))
    src = ImageSource.from_zip(data, "dots.zip")
    with pytest.raises(ImageSetRefused, match=r"30,000 images: decoded at 224×224×3 they need 4,307 MB of memory, "
                                              r"over the limit of 4,096 MB"):
        src.load((224, 224))


def test_lzma_header_asking_for_a_4_gb_window_is_bounded():
    data = _zip({"cats/1.png": _img_bytes(), "dogs/1.png": _img_bytes(color=(5, 6, 7))}, compression=zipfile.ZIP_LZMA)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("cats/1.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    hostile = bytearray(data)
    struct.pack_into("<L", hostile, start + 5, 0xFFFFFFFF)  # LZMA properties: dictionary size
    tracemalloc.start()
    try:
        s = load_image_set(bytes(hostile), (8, 8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(s) == 2 and s.skipped == [] and peak < 8 * 2**20


def test_folder_with_too_many_files_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TLVIZ_MAX_ARCHIVE_ENTRIES", "20")
    for i in range(25):
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / f"{i}.png").write_bytes(b"")
    with pytest.raises(ImageSetRefused, match="holds more than 20 files"):
        open_source(tmp_path)


def test_pixel_bomb_is_skipped_without_decoding(tmp_path, monkeypatch, bomb_png):
    assert len(bomb_png) < 200_000  # 400 Mpixel in a small file
    write_image(tmp_path / "cats" / "ok.png")
    write_image(tmp_path / "dogs" / "ok.png")
    (tmp_path / "dogs" / "bomb.png").write_bytes(bomb_png)
    Image.new("L", (3000, 2000), 0).save(tmp_path / "cats" / "big.png")  # 6 Mpixel, under Pillow's limits
    loaded_sizes = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loaded_sizes.append(self.size) or real_load(self))
    monkeypatch.setenv("TLVIZ_MAX_IMAGE_PIXELS", "5000000")
    s = load_image_set(tmp_path, (8, 8))
    reasons = _reasons(s)
    assert "possible decompression bomb" in reasons["dogs/bomb.png"] and "not decoded" in reasons["dogs/bomb.png"]
    assert reasons["cats/big.png"].startswith("3000x2000 pixels is over the limit of 5,000,000")
    assert len(s) == 2 and (20_000, 20_000) not in loaded_sizes and (3000, 2000) not in loaded_sizes
    # Raising tlviz's limit does not get past Pillow's own hard limit: still skipped, with the reason.
    monkeypatch.setenv("TLVIZ_MAX_IMAGE_PIXELS", "1000000000")
    s = load_image_set(tmp_path, (8, 8))
    assert "Pillow's pixel limit" in _reasons(s)["dogs/bomb.png"] and len(s) == 3
    assert (20_000, 20_000) not in loaded_sizes


# -- broken files ----------------------------------------------------------------

def _broken_entries(bomb: bytes) -> dict[str, bytes]:
    jpeg = _noise_jpeg()
    return {
        "cats/truncated.jpg": jpeg[: len(jpeg) // 2],
        "cats/zero.png": b"",
        "dogs/text.png": b"This is a text file pretending to be a PNG.\nSecond line.\n",
        "dogs/eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "dogs/really_a_zip.png": _zip({"a/1.png": _img_bytes()}),
        "dogs/nested.zip": _zip({"a/1.png": _img_bytes()}),
        "cats/more.tar": b"\0" * 1024,
        "cats/more.tar.gz": b"\x1f\x8b\x08\0",
        "dogs/more.7z": b"7z\xbc\xaf\x27\x1c",
        "stray.zip": b"PK\x05\x06" + b"\0" * 18,
        "dogs/bomb.png": bomb,
    }


def _check_broken(s, nested_reason):
    r = _reasons(s)
    assert r["cats/truncated.jpg"].startswith("truncated image file")
    assert r["cats/zero.png"] == "empty file (0 bytes)"
    assert r["dogs/text.png"] == "not an image: the file holds text, not image data"
    assert r["dogs/eps.png"].startswith("unsupported format: the file is a PostScript/EPS file")
    assert r["dogs/really_a_zip.png"].startswith("not an image: the file is a zip archive")
    for f in ("dogs/nested.zip", "cats/more.tar", "cats/more.tar.gz", "dogs/more.7z", "stray.zip"):
        assert r[f] == nested_reason, f
    assert "decompression bomb" in r["dogs/bomb.png"]
    assert sorted(s.files) == ["cats/ok.png", "dogs/ok.jpg"]


def test_broken_files_each_get_a_reason_from_a_zip(monkeypatch, bomb_png, no_disk_writes):
    from PIL import EpsImagePlugin

    def never(*a, **k):
        pytest.fail("the EPS decoder must never run")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    entries = {"cats/ok.png": _img_bytes(), "dogs/ok.jpg": _noise_jpeg(), **_broken_entries(bomb_png)}
    s = load_image_set(_zip(entries), (8, 8), name="mixed.zip")
    _check_broken(s, REASON_NESTED_ARCHIVE)


def test_broken_files_each_get_a_reason_from_a_folder(tmp_path, bomb_png):
    entries = {"cats/ok.png": _img_bytes(), "dogs/ok.jpg": _noise_jpeg(), **_broken_entries(bomb_png)}
    for name, data in entries.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    s = load_image_set(tmp_path, (8, 8))
    _check_broken(s, REASON_NESTED_ARCHIVE_FOLDER)


def test_encrypted_and_unreadable_entries_are_skipped():
    data = _zip({"cats/1.png": _img_bytes(), "dogs/1.png": _img_bytes(), "dogs/secret.png": _img_bytes()})
    s = load_image_set(_patch_entry(data, "dogs/secret.png", flag_or=0x1), (8, 8))
    assert len(s) == 2 and _reasons(s)["dogs/secret.png"].startswith("encrypted entry")
    # A flipped byte in the compressed data: the CRC check catches it.
    good = _zip({"cats/1.png": _noise_jpeg(), "dogs/1.png": _img_bytes()}, compression=zipfile.ZIP_STORED)
    info = zipfile.ZipFile(io.BytesIO(good)).getinfo("cats/1.png")
    bad = bytearray(good)
    bad[info.header_offset + 30 + len("cats/1.png") + 500] ^= 0xFF
    s = load_image_set(bytes(bad), (8, 8))
    assert _reasons(s)["cats/1.png"].startswith("corrupt archive entry") and s.files == ["dogs/1.png"]


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_bzip2_and_lzma_entries_still_load(method):
    data = _zip({"cats/1.png": _img_bytes(), "dogs/1.jpg": _noise_jpeg(), "labels.txt": "dogs\ncats\n"},
                compression=method)
    s = load_image_set(data, (8, 8))
    assert len(s) == 2 and s.skipped == [] and s.class_names == ["dogs", "cats"]
    assert s.images[s.files.index("cats/1.png")].reshape(-1, 3).tolist()[0] == [10, 200, 30]


# -- conversions -----------------------------------------------------------------

def test_unusual_modes_are_converted_to_sensible_pixels(tmp_path):
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "a" / "cmyk_red.jpg", quality=95)
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(root / "a" / "white16.png")
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(root / "a" / "mid16.png")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 16, 8))  # top half red (index 1), bottom half index 0 = transparent black
    pal.save(root / "b" / "palette.png", transparency=0)
    Image.new("L", (16, 16), 77).save(root / "b" / "gray.png")
    Image.new("LA", (16, 16), (100, 0)).save(root / "b" / "la_clear.png")
    Image.new("LA", (16, 16), (100, 255)).save(root / "b" / "la_solid.png")
    Image.new("1", (16, 16), 1).save(root / "b" / "bilevel.png")
    s = load_image_set(root, (16, 16), resize="nearest")
    assert s.skipped == [] and len(s) == 8
    assert {"CMYK", "I;16", "P", "L", "LA", "1"} <= set(s.original_modes)

    def px(name):
        return s.images[s.files.index(name)].astype(int)

    red = px("a/cmyk_red.jpg").reshape(-1, 3).mean(axis=0)
    assert red[0] > 230 and red[1] < 25 and red[2] < 25
    assert (px("a/white16.png") == 255).all()
    assert np.abs(px("a/mid16.png") - 128).max() <= 1
    p = px("b/palette.png")
    assert (p[:8] == [255, 0, 0]).all() and (p[8:] == 255).all()  # transparent composited on white
    assert (px("b/gray.png") == 77).all()
    assert (px("b/la_clear.png") == 255).all() and (px("b/la_solid.png") == 100).all()
    assert (px("b/bilevel.png") == 255).all()
    g = load_image_set(root, (16, 16), channels=1, resize="nearest")
    assert g.images.shape[-1] == 1 and abs(int(g.images[g.files.index("a/cmyk_red.jpg")].mean()) - 76) < 10


# -- classes ---------------------------------------------------------------------

def test_one_class_loads_and_says_why_it_cannot_be_fine_tuned(tmp_path):
    for i in range(3):
        write_image(tmp_path / "cats" / f"{i}.png")
    s = load_image_set(tmp_path, (8, 8))
    assert s.class_names == ["cats"] and len(s) == 3
    warnings = s.class_warnings()
    assert len(warnings) == 1 and "Only one class has images ('cats')" in warnings[0]
    assert "at least two classes" in warnings[0]
    for i in range(2):
        write_image(tmp_path / "dogs" / f"{i}.png")
    assert load_image_set(tmp_path, (8, 8)).class_warnings() == []
    write_image(tmp_path / "birds" / "0.png")
    assert any("single image in class(es) 'birds'" in w for w in load_image_set(tmp_path, (8, 8)).class_warnings())


def test_two_classes_with_images_is_one_rule(tmp_path, loaded_base):
    """The image set's warning, the fine-tuning refusal and the page's disabled buttons all ask `two_classes_present`."""
    from tlviz.errors import RunRefused
    from tlviz.finetune import RunConfig
    from tlviz.finetune.run import check_run
    from tlviz.imagesets import two_classes_present

    assert not two_classes_present([]) and not two_classes_present([3, 3]) and two_classes_present([0, 2])
    for i in range(3):
        write_image(tmp_path / "cats" / f"{i}.png")
    (tmp_path / "labels.txt").write_text("cats\ndogs\n")  # two classes, one of them without images
    s = load_image_set(tmp_path, loaded_base.image_size, loaded_base.channels)
    assert len(s.class_names) == 2 and not s.two_classes_present
    assert any("Only one class has images ('cats')" in w for w in s.class_warnings())
    with pytest.raises(RunRefused, match="at least two classes; this image set has 1"):
        check_run(loaded_base, s, RunConfig(preset="tf"))


def test_empty_class_folders_are_listed_from_a_folder(tmp_path):
    write_image(tmp_path / "cats" / "1.png")
    write_image(tmp_path / "dogs" / "1.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    (tmp_path / "thumbs").mkdir()
    (tmp_path / "thumbs" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    s = load_image_set(tmp_path, (8, 8))
    r = _reasons(s)
    assert s.class_names == ["cats", "dogs"]
    assert r["empty/"] == REASON_EMPTY_CLASS and r["thumbs/"] == REASON_EMPTY_CLASS
    assert r["notes/"] == REASON_NO_IMAGES_IN_CLASS and "not an image file" in r["notes/readme.txt"]
    assert not any(f.startswith(".git") for f in r)
    # Listed in labels.txt: kept with 0 images, as before, and said so once.
    (tmp_path / "labels.txt").write_text("dogs\nempty\ncats\n")
    s = load_image_set(tmp_path, (8, 8))
    assert s.class_names == ["dogs", "empty", "cats"] and s.counts["empty"] == 0
    assert [sk.reason for sk in s.skipped if sk.file == "empty/"] == [REASON_LISTED_EMPTY]
    assert any("No images in class(es) 'empty'" in w for w in s.class_warnings())


def test_empty_class_folders_are_listed_from_a_zip():
    data = _zip({"set/": b"", "set/cats/": b"", "set/cats/1.png": _img_bytes(), "set/dogs/1.png": _img_bytes(),
                 "set/empty/": b"", "set/also_empty/": b"", "set/also_empty/.DS_Store": b"x"})
    s = load_image_set(data, (8, 8))
    r = _reasons(s)
    assert s.class_names == ["cats", "dogs"] and len(s) == 2
    assert r == {"also_empty/": REASON_EMPTY_CLASS, "empty/": REASON_EMPTY_CLASS}
    with_labels = _zip({"cats/1.png": _img_bytes(), "dogs/1.png": _img_bytes(), "empty/": b"",
                        "labels.txt": "cats\ndogs\nempty\n"})
    s = load_image_set(with_labels, (8, 8))
    assert s.class_names == ["cats", "dogs", "empty"] and _reasons(s) == {"empty/": REASON_LISTED_EMPTY}


NAMES = ["red panda", "Ünïcödé", "猫"]


def test_unicode_and_spaced_class_names_from_a_folder(tmp_path):
    for n in NAMES:
        write_image(tmp_path / n / "1 image.png")
    nfd = unicodedata.normalize("NFD", "Ärger")  # how macOS file systems spell it
    write_image(tmp_path / nfd / "1.png")
    s = load_image_set(tmp_path, (8, 8))
    assert s.class_names == sorted(NAMES + ["Ärger"]) and s.skipped == []
    assert "Ärger" in s.class_names  # normalised to NFC, so it matches a typed labels.txt
    (tmp_path / "labels.txt").write_text("猫\nÄrger\nred panda\nÜnïcödé\n", encoding="utf-8")
    assert load_image_set(tmp_path, (8, 8)).class_names == ["猫", "Ärger", "red panda", "Ünïcödé"]


def test_unicode_class_names_from_a_utf8_flagged_zip():
    data = _zip({f"{n}/1.png": _img_bytes() for n in NAMES})
    assert all(i.flag_bits & 0x800 for i in zipfile.ZipFile(io.BytesIO(data)).infolist() if not i.filename.isascii())
    s = load_image_set(data, (8, 8))
    assert s.class_names == sorted(NAMES) and s.skipped == []


def _rename_raw(data: bytes, renames: dict[str, bytes]) -> bytes:
    """Replace ASCII placeholder names by raw name bytes of the same length (no UTF-8 flag)."""
    for ascii_name, raw in renames.items():
        assert len(ascii_name.encode()) == len(raw)
        data = data.replace(ascii_name.encode() + b"/", raw + b"/")
    return data


def test_unicode_class_names_from_legacy_zips():
    # cp437 names, as old Windows tools write them (no UTF-8 flag).
    cp437 = "Ünïcödé".encode("cp437")
    data = _rename_raw(_zip({"UNICODE/1.png": _img_bytes(), "red panda/1.png": _img_bytes()}), {"UNICODE": cp437})
    assert not any(i.flag_bits & 0x800 for i in zipfile.ZipFile(io.BytesIO(data)).infolist())
    assert load_image_set(data, (8, 8)).class_names == ["red panda", "Ünïcödé"]
    # UTF-8 names without the flag, as macOS and Info-ZIP write them.
    cat, uni = "猫".encode(), "Ünïcödé".encode()
    data = _rename_raw(_zip({"CAT/1.png": _img_bytes(), "U" * len(uni) + "/1.png": _img_bytes()}),
                       {"CAT": cat, "U" * len(uni): uni})
    assert load_image_set(data, (8, 8)).class_names == sorted(["猫", "Ünïcödé"])


def test_windows_separators_in_a_zip():
    data = _zip({"set\\cats\\1.png": _img_bytes(), "set\\dogs\\1.png": _img_bytes()})
    s = load_image_set(data, (8, 8))
    assert s.class_names == ["cats", "dogs"] and s.files == ["cats/1.png", "dogs/1.png"]


# -- folders: links and special files ----------------------------------------------

def test_folder_symlinks_are_skipped_and_not_followed(tmp_path):
    outside = tmp_path / "outside"
    write_image(outside / "secret.png")
    write_image(outside / "secret_dir" / "a.png")
    write_image(outside / "secret_dir" / "b.png")
    root = tmp_path / "set"
    write_image(root / "cats" / "1.png")
    write_image(root / "dogs" / "1.png")
    (root / "cats" / "link.png").symlink_to(outside / "secret.png")
    (root / "linked_class").symlink_to(outside / "secret_dir", target_is_directory=True)
    (root / "dogs" / "dirlink").symlink_to(outside / "secret_dir", target_is_directory=True)
    (root / "labels.txt").symlink_to(outside / "secret.png")
    s = load_image_set(root, (8, 8))
    r = _reasons(s)
    assert len(s) == 2 and sorted(s.files) == ["cats/1.png", "dogs/1.png"]
    for f in ("cats/link.png", "linked_class", "dogs/dirlink", "labels.txt"):
        assert r[f] == "symbolic link: not followed", f
    assert s.class_names == ["cats", "dogs"] and not s.label_order_from_file


def test_fifo_in_a_folder_is_skipped_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    write_image(tmp_path / "cats" / "1.png")
    os.mkfifo(tmp_path / "cats" / "pipe.png")  # opening it for reading would block forever
    s = load_image_set(tmp_path, (8, 8))
    assert len(s) == 1 and "not a regular file" in _reasons(s)["cats/pipe.png"]


# -- the app ---------------------------------------------------------------------

def test_app_upload_of_a_mixed_zip_lists_every_bad_file(bomb_png):
    from apptest_helpers import open_app, upload_zip

    entries = {}
    for cls in ("0", "1"):
        for p in sorted((DIGITS / cls).glob("*.png"))[:5]:
            entries[f"mixed/{cls}/{p.name}"] = p.read_bytes()
    jpeg = _noise_jpeg()
    bad = {
        "mixed/0/truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated image file"),
        "mixed/0/zero.png": (b"", "empty file (0 bytes)"),
        "mixed/1/text.png": (b"just some text\n", "holds text"),
        "mixed/1/inner.zip": (_zip({"x/1.png": _img_bytes()}), REASON_NESTED_ARCHIVE),
        "mixed/1/bomb.png": (bomb_png, "decompression bomb"),
    }
    entries.update({k: v[0] for k, v in bad.items()})
    at = upload_zip(open_app(), "mixed.zip", _zip(entries))
    assert not at.exception
    images = at.session_state["images"]
    assert images.class_names == ["0", "1"] and len(images) == 10
    tables = [d.value for d in at.dataframe if list(d.value.columns) == ["file", "reason"]]
    assert tables, "the skipped files are not listed on the page"
    shown = dict(zip(tables[0]["file"], tables[0]["reason"]))
    for rel, (_, reason) in bad.items():
        rel = rel.removeprefix("mixed/")
        assert rel in shown and reason in shown[rel], (rel, shown.get(rel))
    assert {m.label: m.value for m in at.metric}["Skipped files"] == str(len(bad))


# -- server folders: TLVIZ_IMAGE_ROOTS ------------------------------------------------

def test_server_folders_are_limited_to_the_shared_roots(tmp_path, monkeypatch):
    from tlviz.imagesets import check_server_folder

    shared = tmp_path / "shared"
    (shared / "set" / "cats").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    (shared / "escape").symlink_to(secret, target_is_directory=True)

    monkeypatch.delenv("TLVIZ_IMAGE_ROOTS", raising=False)
    assert check_server_folder(secret) == secret.resolve()  # unset: a laptop, anything readable

    monkeypatch.setenv("TLVIZ_IMAGE_ROOTS", str(shared))
    assert check_server_folder(shared / "set") == (shared / "set").resolve()
    for outside in (secret, shared / ".." / "secret", shared / "escape", "/etc"):
        with pytest.raises(ImageSetRefused, match="outside the folders this server shares"):
            check_server_folder(outside)

    monkeypatch.setenv("TLVIZ_IMAGE_ROOTS", "off")
    with pytest.raises(ImageSetRefused, match="turned off"):
        check_server_folder(shared / "set")


def test_app_refuses_a_folder_outside_the_shared_roots_and_keeps_the_images(tmp_path, monkeypatch):
    from apptest_helpers import open_app

    monkeypatch.setenv("TLVIZ_IMAGE_ROOTS", str(tmp_path / "shared"))
    at = open_app()
    before = len(at.session_state["images"])
    at.radio(key="images_kind").set_value("Server folder")
    at.run()
    at.text_input(key="images_folder").set_value("/etc")
    at.button(key="images_folder_load").click()
    at.run()
    assert not at.exception
    assert any("outside the folders this server shares" in e.value for e in at.error)
    assert len(at.session_state["images"]) == before

    monkeypatch.setenv("TLVIZ_IMAGE_ROOTS", "off")
    at2 = open_app()
    assert "Server folder" not in at2.radio(key="images_kind").options


def test_one_class_set_is_flagged_and_fine_tuning_waits_for_a_second_class(tmp_path):
    from apptest_helpers import open_app, texts, upload_zip

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(6):
            b = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(b, "PNG")
            zf.writestr(f"only_cats/{i}.png", b.getvalue())
    at = upload_zip(open_app(), "cats.zip", buf.getvalue())
    assert not at.exception
    assert "1 class · :orange[one class only]" in texts(at)
    assert any("Only one class has images ('only_cats')" in w.value for w in at.warning)
    assert not any("Fine-tune with a new head" in w.value for w in at.warning)  # wrong advice for one class
    at.switch_page("pages/finetune.py")
    at.run()
    assert not at.exception
    assert at.button(key="ft_start").disabled and at.button(key="ft_lrfind").disabled
    assert any("at least two classes" in w.value for w in at.warning)
