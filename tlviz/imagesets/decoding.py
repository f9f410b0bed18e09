"""Decoding one image: only the allowed Pillow decoders, pixel limits, modes, resize methods.

`decode_image(data, size, channels, resize)` turns a file's bytes into ``uint8``
``(H, W, channels)``; `decode_image_details` also returns the file's EXIF orientation, and
applies it on request (``orientation="apply"``). Only the PNG, JPEG, BMP, GIF and WebP decoders run, whatever a file is
named (Pillow's other plugins are never reached); the pixel count is checked from the header
before any pixel is decoded; grayscale, alpha, palette, CMYK and 16-bit images are converted.
Data that cannot be used raises `ImageSkipped` with the reason, naming the format where the
file's signature gives it away.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

from tlviz.errors import ImageSkipped
from tlviz.imagesets.limits import max_image_pixels

RESIZE_METHODS = ("bilinear", "nearest", "area", "crop")
RESIZE_DESCRIPTIONS = {
    "bilinear": "bilinear resize (the Keras / tf.image default)",
    "nearest": "nearest-neighbour resize",
    "area": "area (box) resize",
    "crop": "centre crop to a square, then bilinear resize",
}
#: What to do with a file's EXIF orientation tag: ``"ignore"`` it (what Keras's ``load_img`` and
#: ``image_dataset_from_directory`` do, and tlviz's default) or ``"apply"`` it (what phones, browsers and
#: ``PIL.ImageOps.exif_transpose`` show).
ORIENTATIONS = ("ignore", "apply")
#: The EXIF tag that holds the orientation.
EXIF_ORIENTATION_TAG = 0x0112
#: What each EXIF orientation value means (1 is "normal": the pixels are stored the way they are shown).
ORIENTATION_NAMES = {
    1: "normal", 2: "mirrored left-right", 3: "rotated 180°", 4: "mirrored top-bottom",
    5: "mirrored and rotated 90° counter-clockwise", 6: "rotated 90° clockwise",
    7: "mirrored and rotated 90° clockwise", 8: "rotated 90° counter-clockwise",
}

_PIL_FILTERS = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "area": Image.BOX, "crop": Image.BILINEAR}
#: The only Pillow decoders that run (the JPEG one also opens multi-picture camera JPEGs as MPO).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "WEBP")
# File signatures of formats that are not decoded, to name them in the skip reason.
_OTHER_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive", 0), (b"PK\x05\x06", "a zip archive", 0), (b"\x1f\x8b", "a gzip archive", 0),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", 0), (b"Rar!", "a RAR archive", 0), (b"ustar", "a tar archive", 257),
    (b"II*\x00", "a TIFF image", 0), (b"MM\x00*", "a TIFF image", 0), (b"%PDF", "a PDF document", 0),
    (b"%!PS", "a PostScript/EPS file", 0), (b"\xc5\xd0\xd3\xc6", "a PostScript/EPS file", 0),
    (b"8BPS", "a Photoshop file", 0), (b"ftypheic", "a HEIC image", 4), (b"ftypheix", "a HEIC image", 4),
    (b"ftypmif1", "a HEIF image", 4), (b"ftypavif", "an AVIF image", 4), (b"\x00\x00\x01\x00", "an icon file", 0),
)


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


def decode_image(data: bytes, size: tuple[int, int], channels: int = 3, resize: str = "bilinear",
                 orientation: str = "ignore", *, with_orientation: bool = False):
    """Decode one image to ``uint8`` ``(H, W, channels)``; by default its EXIF orientation is ignored, as Keras does.

    Args / Raises: as `decode_image_details`.

    Returns:
        ``(array, (orig_width, orig_height), orig_mode)``, plus the EXIF orientation as a fourth
        item with ``with_orientation=True``.
    """
    out = decode_image_details(data, size, channels, resize, orientation)
    return out if with_orientation else out[:3]


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 to 8) of an opened image; 1 ("normal") when it has none or it is unreadable."""
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block only means "no orientation"
        return 1
    return value if value in ORIENTATION_NAMES else 1


def decode_image_details(data: bytes, size: tuple[int, int], channels: int = 3, resize: str = "bilinear",
                         orientation: str = "ignore") -> tuple[np.ndarray, tuple[int, int], str, int]:
    """Decode one image to ``uint8`` ``(H, W, channels)``, and read its EXIF orientation.

    Only the PNG, JPEG, BMP, GIF and WebP decoders are tried. The pixel count is
    checked from the header before any pixel is decoded. Grayscale, RGBA
    (composited on white), palette (with transparency), CMYK and 16-bit images
    are converted. Raises `ImageSkipped` with a reason for unusable data.

    Args:
        data: the file's bytes.
        size: ``(height, width)`` to resize to.
        channels: 1 or 3. Defaults to `3`.
        resize: one of `RESIZE_METHODS`. Defaults to `"bilinear"`.
        orientation: ``"ignore"`` keeps the pixels as stored (Keras's ``load_img`` does the same);
            ``"apply"`` turns them the way the EXIF orientation says (as phones show them) before
            resizing. Defaults to `"ignore"`.

    Returns:
        ``(array, (orig_width, orig_height), orig_mode, exif_orientation)``: the size and mode as
        stored in the file; the orientation is 1 ("normal") when the file records none.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"Unknown orientation {orientation!r}. Use one of: {', '.join(ORIENTATIONS)}.")
    if not data:
        raise ImageSkipped("empty file (0 bytes)")
    limit = max_image_pixels()
    try:
        img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
        w0, h0 = img.size
        if w0 * h0 > limit:
            raise ImageSkipped(f"{w0}x{h0} pixels is over the limit of {limit:,} (possible decompression bomb): "
                             "not decoded (raise TLVIZ_MAX_IMAGE_PIXELS to allow it)")
        mode = img.mode
        turned = exif_orientation(img)
        img.load()
    except ImageSkipped:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageSkipped(f"over Pillow's pixel limit (possible decompression bomb): not decoded ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageSkipped(_what_is_it(data)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, MemoryError) as exc:
        text = str(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise ImageSkipped("truncated image file (the data ends early): export or download it again") from None
        raise ImageSkipped(f"corrupt image ({text[:120]})") from None
    if orientation == "apply" and turned != 1:
        img = ImageOps.exif_transpose(img)
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
    return arr, (w0, h0), mode, turned


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
