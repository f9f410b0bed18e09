"""Image sets: formats and conversions, skipped files with reasons, hostile archives refused."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from tlviz.errors import ImageSetRefused
from tlviz.imagesets import ImageSource, load_image_set, open_source


def _zip(entries: dict[str, bytes], symlinks=()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "../../etc/passwd")
    return buf.getvalue()


def _png(size=(12, 10), color=(10, 200, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode != "L" else 128).save(buf, "PNG")
    return buf.getvalue()


def test_sample_set_loads_at_model_size(base_images):
    assert base_images.images.dtype == np.uint8
    assert base_images.images.shape[1:] == (32, 32, 3)
    assert base_images.class_names == ["0", "1", "2", "3", "4"]
    assert sum(base_images.counts.values()) == len(base_images) > 800
    assert base_images.skipped == []


def test_every_format_and_mode_is_converted(tmp_path):
    root = tmp_path / "set"
    write_image(root / "a" / "rgb.jpg", mode="RGB")
    write_image(root / "a" / "gray.png", mode="L")
    write_image(root / "a" / "rgba.png", mode="RGBA")
    write_image(root / "a" / "palette.gif", mode="P")
    write_image(root / "b" / "cmyk.jpg", mode="CMYK")
    write_image(root / "b" / "deep.png", mode="I;16")
    write_image(root / "b" / "pic.bmp", mode="RGB")
    write_image(root / "b" / "pic.webp", mode="RGB")
    s = load_image_set(root, (8, 9), channels=3)
    assert len(s) == 8 and s.skipped == []
    assert s.images.shape == (8, 8, 9, 3) and s.images.dtype == np.uint8
    assert {"L", "RGBA", "P", "CMYK", "I;16", "RGB"} <= set(s.original_modes)
    deep = s.images[s.files.index("b/deep.png")]
    assert deep.max() > 100  # 16-bit scaled down, not clipped to 255 or 0
    g = load_image_set(root, (8, 8), channels=1)
    assert g.images.shape == (8, 8, 8, 1)


def test_resize_methods_differ(tmp_path):
    root = tmp_path / "set"
    write_image(root / "a" / "x.png", size=(64, 40))
    src = open_source(root)
    outs = {m: src.load((16, 16), resize=m).images[0] for m in ("bilinear", "nearest", "area", "crop")}
    assert not np.array_equal(outs["bilinear"], outs["nearest"])
    assert not np.array_equal(outs["bilinear"], outs["crop"])
    with pytest.raises(ValueError, match="Unknown resize"):
        src.load((16, 16), resize="lanczos3")


def test_bad_files_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "set"
    write_image(root / "cats" / "good.png")
    write_image(root / "dogs" / "good.jpg")
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    full = (root / "cats" / "good.png").read_bytes()
    (root / "cats" / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "cats" / "notes.txt").write_text("hello")
    (root / "loose.jpg").write_bytes(full)
    s = load_image_set(root, (8, 8))
    assert len(s) == 2
    reasons = {sk.file: sk.reason for sk in s.skipped}
    assert "empty" in reasons["dogs/empty.jpg"]
    assert "corrupt" in reasons["dogs/corrupt.png"] or "not a readable image" in reasons["dogs/corrupt.png"]
    assert "truncated" in reasons["cats/truncated.png"] or "corrupt" in reasons["cats/truncated.png"]
    assert "not an image" in reasons["cats/notes.txt"]
    assert "class folder" in reasons["loose.jpg"]


def test_labels_txt_fixes_class_order(tmp_path):
    root = tmp_path / "set"
    for c in ("apple", "banana", "cherry"):
        write_image(root / c / "1.png")
    (root / "labels.txt").write_text("cherry\napple\nbanana\n")
    s = load_image_set(root, (8, 8))
    assert s.class_names == ["cherry", "apple", "banana"] and s.label_order_from_file
    assert s.labels[s.files.index("cherry/1.png")] == 0
    (root / "labels.txt").unlink()
    assert load_image_set(root, (8, 8)).class_names == ["apple", "banana", "cherry"]


def test_zip_with_wrapping_folder_and_labels(tmp_path):
    data = _zip({"myset/b/1.png": _png(), "myset/a/1.png": _png(), "myset/labels.txt": b"b\na\n",
                 "__MACOSX/myset/a/._1.png": b"junk"})
    s = load_image_set(data, (6, 6), name="myset.zip")
    assert s.class_names == ["b", "a"] and len(s) == 2 and s.skipped == []


@pytest.mark.parametrize("entries,symlinks,match", [
    ({"/etc/cats/1.png": b"x"}, (), "absolute path"),
    ({"cats/../../evil.png": b"x"}, (), "outside the archive"),
    ({"cats/1.png": b"x"}, ("cats/link.png",), "symbolic link"),
])
def test_hostile_archives_refused(entries, symlinks, match):
    with pytest.raises(ImageSetRefused, match=match):
        ImageSource.from_zip(_zip(entries, symlinks), "evil.zip")


def test_archive_limits(monkeypatch):
    data = _zip({f"c/{i}.png": _png() for i in range(12)})
    monkeypatch.setenv("TLVIZ_MAX_ARCHIVE_ENTRIES", "10")
    with pytest.raises(ImageSetRefused, match="12 entries, over the limit of 10"):
        ImageSource.from_zip(data)
    monkeypatch.delenv("TLVIZ_MAX_ARCHIVE_ENTRIES")
    bomb = _zip({"c/zeros.png": b"\0" * 3_000_000})  # compresses to a few KB
    monkeypatch.setenv("TLVIZ_MAX_ARCHIVE_MB", "1")
    with pytest.raises(ImageSetRefused, match="unpacks to"):
        ImageSource.from_zip(bomb)


def test_pixel_limit_skips_decompression_bombs(tmp_path, monkeypatch):
    root = tmp_path / "set"
    write_image(root / "a" / "small.png", size=(10, 10))
    Image.new("L", (3000, 3000), 0).save(root / "a" / "huge.png")  # tiny file, 9 Mpixel
    monkeypatch.setenv("TLVIZ_MAX_IMAGE_PIXELS", "1000000")
    s = load_image_set(root, (8, 8))
    assert len(s) == 1
    assert "decompression bomb" in s.skipped[0].reason and s.skipped[0].file == "a/huge.png"


def test_nothing_usable_is_refused(tmp_path):
    with pytest.raises(ImageSetRefused, match="not found"):
        load_image_set(tmp_path / "missing", (8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSetRefused, match="one sub-folder per class"):
        load_image_set(tmp_path / "empty", (8, 8))
    with pytest.raises(ImageSetRefused, match="not a readable zip"):
        load_image_set(b"PK\x03\x04garbage", (8, 8))
    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(ImageSetRefused, match="No usable images"):
        load_image_set(tmp_path / "bad", (8, 8))


def _jpeg_with_orientation(pixels: np.ndarray, orientation: int | None) -> bytes:
    """A JPEG of `pixels` whose EXIF says `orientation` (None: no EXIF at all), as a phone writes it."""
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if orientation is None:
        img.save(buf, "JPEG", quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _top_bright(h=40, w=24) -> np.ndarray:
    """Bright top half, dark bottom half: any turn or flip of it is easy to tell apart."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2] = 230
    a[: h // 2, : w // 3] = (230, 20, 20)  # a red patch at the top left
    return a


def test_exif_orientation_is_recorded_ignored_by_default_and_applied_on_request(tmp_path):
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    for name, o in (("plain.jpg", None), ("normal.jpg", 1), ("rot180.jpg", 3), ("rot90cw.jpg", 6), ("mirror.jpg", 2)):
        (root / "a" / name).write_bytes(_jpeg_with_orientation(_top_bright(), o))
    source = open_source(root)
    s = source.load((40, 40))
    got = dict(zip(s.files, s.orientations))
    assert got == {"a/mirror.jpg": 2, "a/normal.jpg": 1, "a/plain.jpg": 1, "a/rot180.jpg": 3, "a/rot90cw.jpg": 6}
    assert s.orientation_known and s.orientation == "ignore"
    assert source.orientations() == got  # from the headers alone
    # Ignored (as Keras's load_img does): every image keeps its stored pixels.
    for f in s.files:
        top, bottom = s.images[s.files.index(f)][:20].mean(), s.images[s.files.index(f)][20:].mean()
        assert top > bottom + 100, f
    applied = source.load((40, 40), orientation="apply", only=["a/rot180.jpg", "a/rot90cw.jpg", "a/mirror.jpg"])
    assert sorted(applied.files) == ["a/mirror.jpg", "a/rot180.jpg", "a/rot90cw.jpg"]
    img = {f: applied.images[i].astype(int) for i, f in enumerate(applied.files)}
    assert img["a/rot180.jpg"][20:].mean() > img["a/rot180.jpg"][:20].mean() + 100  # bright half now at the bottom
    left, right = img["a/rot90cw.jpg"][:, :20].mean(), img["a/rot90cw.jpg"][:, 20:].mean()
    assert right > left + 100  # turned 90° clockwise: the top went right
    red = img["a/mirror.jpg"][:20, :, 0] - img["a/mirror.jpg"][:20, :, 1]
    assert red[:, 30:].mean() > red[:, :10].mean() + 100  # mirrored: the red patch moved to the right
    with pytest.raises(ValueError, match="orientation"):
        source.load((8, 8), orientation="rotate")


def test_a_subset_made_by_hand_does_not_claim_orientations(base_images):
    from dataclasses import replace

    assert base_images.orientation_known and set(base_images.orientations) == {1}
    part = replace(base_images, images=base_images.images[:5], labels=base_images.labels[:5],
                   files=base_images.files[:5])
    assert not part.orientation_known
