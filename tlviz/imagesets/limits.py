"""The size limits an image set is held to, and the messages when one is crossed.

Each limit is read through `tlviz.config` when it is needed, so a test or a server can change it
at run time: ``TLVIZ_MAX_ARCHIVE_ENTRIES``, ``TLVIZ_MAX_ARCHIVE_MB``, ``TLVIZ_MAX_IMAGE_MB``,
``TLVIZ_MAX_DECODED_MB`` and ``TLVIZ_MAX_IMAGE_PIXELS`` (see the `tlviz.imagesets` docstring for
what each bounds, `tlviz.config.SETTINGS` for the defaults). A value that is not a positive
number raises `ConfigError`.
"""

from __future__ import annotations

from tlviz import config
from tlviz.errors import ImageSetRefused, ImageSkipped


def max_archive_entries() -> int:
    """Most entries in a `.zip` (or files under a folder); ``TLVIZ_MAX_ARCHIVE_ENTRIES``."""
    return config.count("TLVIZ_MAX_ARCHIVE_ENTRIES")


def max_archive_bytes() -> int:
    """Most uncompressed bytes a `.zip`'s entries may declare; ``TLVIZ_MAX_ARCHIVE_MB``."""
    return config.megabytes("TLVIZ_MAX_ARCHIVE_MB")


def max_image_bytes() -> int:
    """Most bytes of one image file; ``TLVIZ_MAX_IMAGE_MB``."""
    return config.megabytes("TLVIZ_MAX_IMAGE_MB")


def max_decoded_bytes() -> int:
    """Most bytes the decoded ``uint8`` set may take; ``TLVIZ_MAX_DECODED_MB``."""
    return config.megabytes("TLVIZ_MAX_DECODED_MB")


def max_image_pixels() -> int:
    """Most pixels in one image; ``TLVIZ_MAX_IMAGE_PIXELS``."""
    return config.count("TLVIZ_MAX_IMAGE_PIXELS")


def oversize(n: int, cap: int, labels: bool) -> Exception:
    """The exception for a file of `n` bytes over its `cap`: `ImageSetRefused` for labels.txt, else `ImageSkipped`."""
    if labels:
        return ImageSetRefused(f"labels.txt is {n / 1e6:,.1f} MB; it should list one class name per line "
                               f"(at most {cap // 1024:,} KB). Fix labels.txt and load the set again.")
    return ImageSkipped(f"{n / 1024 / 1024:,.1f} MB is over the per-image limit of {cap / 2**20:,.4g} MB: "
                      "not read (shrink the image, or raise TLVIZ_MAX_IMAGE_MB)")


def too_many_entries(name: str, n: int) -> ImageSetRefused:
    """The refusal of a folder or archive `name` with `n` entries, over ``TLVIZ_MAX_ARCHIVE_ENTRIES``."""
    return ImageSetRefused(
        f"{name} has {n:,} entries, over the limit of {max_archive_entries():,}. "
        "Upload a smaller sample, or raise TLVIZ_MAX_ARCHIVE_ENTRIES."
    )
