"""Image sets: labelled images, one sub-folder per class, from a folder or a `.zip`.

Every image is decoded once, converted to the model's channel count, resized to
the model's input size and held as ``uint8``. Files that cannot be used are
skipped and listed with the reason; archives that look hostile are refused as a
whole before any image is decoded.

Limits (environment variables read through `tlviz.config`, whose `SETTINGS` hold the defaults; a
value that is not a positive number raises `ConfigError`):

- ``TLVIZ_MAX_ARCHIVE_ENTRIES`` — entries in a `.zip`, or files under a folder. A `.zip`'s count
  is read from its end record before its entry list is parsed.
- ``TLVIZ_MAX_ARCHIVE_MB`` — total uncompressed size a `.zip`'s entries declare.
- ``TLVIZ_MAX_IMAGE_MB`` — one image file, uncompressed; a larger file is skipped without being
  read.
- ``TLVIZ_MAX_DECODED_MB`` — memory for the decoded set at the model's input size (the default
  holds e.g. 27,000 images at 224×224×3); a set that would need more is refused before decoding,
  so thousands of tiny files cannot blow up to gigabytes.
- ``TLVIZ_MAX_IMAGE_PIXELS`` — pixels in one image; larger images are treated as decompression
  bombs and skipped without being decoded. Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``,
  twice of which is a hard error) applies on top.

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

EXIF orientation (phones store a photo's pixels as the sensor saw them and an EXIF tag saying how
to turn them): each image's orientation is recorded (`ImageSet.orientations`, 1 = "normal";
`ImageSource.orientations()` reads it from the headers alone). The pixels are kept as stored by
default, which is what Keras's ``load_img`` and ``image_dataset_from_directory`` give a model;
``ImageSource.load(..., orientation="apply")`` turns them as a phone shows them (``only=`` decodes
just some files, e.g. the turned ones).

Class names keep spaces and non-ASCII letters; they are NFC-normalised (as is
``labels.txt``, read one name per line or in Teachable Machine's ``0 name`` spelling:
`tlviz.labels`), and zip names written as UTF-8 without the UTF-8 flag (macOS,
Info-ZIP) are read as UTF-8, others as cp437.

Modules:

- `tlviz.imagesets.sources` — `ImageSource` (made from a folder or a `.zip`, refused as a whole
  or decoded into an `ImageSet`), `open_source`, `load_image_set`.
- `tlviz.imagesets.imageset` — `ImageSet`, `Skipped` and the skip reasons, the class rules
  (class folders, ``labels.txt`` order, `two_classes_present`).
- `tlviz.imagesets.decoding` — `decode_image` / `decode_image_details`: allowed decoders, pixel limit, modes,
  resize methods, EXIF orientation.
- `tlviz.imagesets.folders` — walking a folder, bounded file reads, server folders.
- `tlviz.imagesets.archives` — a `.zip`'s end record, entry names and paths, bounded entry reads.
- `tlviz.imagesets.limits` — the ``TLVIZ_*`` limits above and the messages when one is crossed.

Everything public is imported from this package (``from tlviz.imagesets import load_image_set``).
"""

from tlviz.imagesets.decoding import (
    ORIENTATION_NAMES,
    ORIENTATIONS,
    RESIZE_DESCRIPTIONS,
    RESIZE_METHODS,
    decode_image,
    decode_image_details,
)
from tlviz.imagesets.folders import ENV_IMAGE_ROOTS, check_server_folder, server_folder_roots
from tlviz.imagesets.imageset import (
    ARCHIVE_EXTENSIONS,
    IMAGE_EXTENSIONS,
    REASON_EMPTY_CLASS,
    REASON_LISTED_EMPTY,
    REASON_NESTED_ARCHIVE,
    REASON_NESTED_ARCHIVE_FOLDER,
    REASON_NO_IMAGES_IN_CLASS,
    ImageSet,
    Skipped,
    two_classes_present,
)
from tlviz.imagesets.limits import (
    max_archive_bytes,
    max_archive_entries,
    max_decoded_bytes,
    max_image_bytes,
    max_image_pixels,
)
from tlviz.imagesets.sources import ImageSource, load_image_set, open_source

__all__ = [
    "ARCHIVE_EXTENSIONS", "ENV_IMAGE_ROOTS", "IMAGE_EXTENSIONS", "ORIENTATIONS", "ORIENTATION_NAMES",
    "RESIZE_DESCRIPTIONS", "RESIZE_METHODS",
    "REASON_EMPTY_CLASS", "REASON_LISTED_EMPTY", "REASON_NESTED_ARCHIVE", "REASON_NESTED_ARCHIVE_FOLDER",
    "REASON_NO_IMAGES_IN_CLASS",
    "ImageSet", "ImageSource", "Skipped",
    "check_server_folder", "decode_image", "decode_image_details", "load_image_set", "max_archive_bytes", "max_archive_entries",
    "max_decoded_bytes", "max_image_bytes", "max_image_pixels", "open_source", "server_folder_roots",
    "two_classes_present",
]
