"""Exact and near-duplicate images: a difference hash to find candidates, thumbnails to confirm them.

The same photo often sits in an image set twice: copied into two class folders
(a label conflict the model cannot resolve), or twice in one class, where a
random train / validation split puts one copy on each side and validation
accuracy measures memory instead of generalisation. `find_duplicates` groups
such images; `DuplicateGroups.group_ids` gives every image a group id, so that
a split (or a cross-validation) can keep each group on one side.

How two images are judged duplicates, on the decoded images (the model's input
size):

1. **Difference hash** (written here, no dependency): the grayscale image is
   reduced to 9 x 8 cells by area averaging, and each of the 64 bits says whether
   a cell is brighter than its right-hand neighbour. Re-encoding and resizing
   change a few bits; images whose hashes differ in at most ``max_bits`` bits are
   candidates. Candidates are found without comparing every pair: the 64 bits are
   cut into ``max_bits + 1`` bands, and two hashes within ``max_bits`` bits agree
   exactly on at least one band (pigeonhole), so only images sharing a band value
   are compared.
2. **Thumbnails**: a candidate pair is kept when the mean absolute difference of
   the two 32 x 32 grayscale thumbnails is at most ``tolerance`` grey levels (of
   255). Distinct images that happen to share a hash (simple shapes, digits) differ
   by far more.

Pairs are joined into groups (an image close to two others joins both).

Public API: `difference_hash(images)`, `find_duplicates(images, max_bits=None, tolerance=None)`
-> `DuplicateGroups`, `duplicate_group_ids(images)`, `thumbnail_difference(a, b)`, `HASH_BITS`,
`THUMBNAIL_SIDE`. The default
thresholds are the ``duplicate-images`` check's (`tlviz.diagnose.registry`, where the reasons are
written).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bits in a difference hash (8 rows of 8 neighbour comparisons).
HASH_BITS = 64
#: Side of the grayscale thumbnails that confirm a candidate pair.
THUMBNAIL_SIDE = 32
#: Candidate pairs whose thumbnails are compared at once (bounds the memory of the comparison).
_PAIR_CHUNK = 8192
#: Images converted to grayscale at once (bounds the float copy: 64 x 224 x 224 x 4 bytes = 13 MB).
_IMAGE_CHUNK = 64
#: Popcount of every byte value.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass
class DuplicateGroups:
    """Groups of images that are copies of one another.

    Attributes:
        groups: each group's image indices (sorted, at least two), groups ordered by their first image.
        exact: per group, whether every image in it has exactly the same pixels.
        pairs: ``(i, j, difference)`` for every confirmed pair, ``i < j``: the mean absolute
            difference of their thumbnails in grey levels (0 for exact copies).
        n_images: images examined.
        max_bits / tolerance: the thresholds used.
    """

    groups: list[np.ndarray]
    exact: list[bool]
    pairs: list[tuple[int, int, float]]
    n_images: int
    max_bits: int
    tolerance: float

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def extra_copies(self) -> int:
        """Images beyond the first of each group (what removing duplicates would remove)."""
        return int(sum(len(g) - 1 for g in self.groups))

    def group_ids(self) -> np.ndarray:
        """A group id per image: the images of one group share an id, every other image has its own.

        Use it to split so that duplicates stay on one side, e.g. assign ids (not images) to the
        training or the validation side, or with scikit-learn's ``GroupShuffleSplit`` / ``GroupKFold``.

        Returns:
            ``int64`` array of length `n_images`; ids are ``0 .. n_distinct - 1``, in order of first image.
        """
        owner = np.arange(self.n_images, dtype=np.int64)
        for g in self.groups:
            owner[g] = g[0]
        _, ids = np.unique(owner, return_inverse=True)
        return ids.astype(np.int64)

    def classes(self, labels) -> list[list[int]]:
        """The distinct labels within each group (a group with two or more spans classes)."""
        labels = np.asarray(labels)
        return [sorted({int(x) for x in labels[g]}) for g in self.groups]


def _gray(images: np.ndarray) -> np.ndarray:
    """``float32`` luma ``(N, H, W)`` of ``uint8`` ``(N, H, W, C)`` images."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"Pass images as an (N, height, width, 1 or 3) array, not shape {arr.shape}.")
    if arr.shape[-1] == 1:
        return arr[..., 0].astype(np.float32)
    # channel by channel: no float copy of all three channels (at 224x224 that copy was the diagnosis's peak)
    gray = arr[..., 0].astype(np.float32)
    gray *= np.float32(0.299)
    gray += arr[..., 1] * np.float32(0.587)
    gray += arr[..., 2] * np.float32(0.114)
    return gray


def _area_resize(gray: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Area-average ``(N, H, W)`` to ``(N, rows, cols)``: each output cell is the mean of the pixels it
    covers, partial pixels weighted by the part covered (works for any sizes, up or down)."""
    def weights(n_in: int, n_out: int) -> np.ndarray:
        edges = np.linspace(0.0, n_in, n_out + 1)
        lo, hi = edges[:-1, None], edges[1:, None]
        px = np.arange(n_in)[None, :]
        cover = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0.0, None)
        return (cover / cover.sum(axis=1, keepdims=True)).astype(np.float32)

    wr = weights(gray.shape[1], rows)
    wc = weights(gray.shape[2], cols)
    return np.einsum("rh,nhw,cw->nrc", wr, gray, wc, optimize=True)


def difference_hash(images: np.ndarray) -> np.ndarray:
    """The 64-bit difference hash of each image.

    Args:
        images: ``uint8`` ``(N, H, W, 1 or 3)``.

    Returns:
        ``uint64`` ``(N,)``: bit ``8 * row + col`` (most significant first) is set when cell
        ``(row, col)`` of the 9 x 8 area-averaged grayscale image is brighter than cell ``(row, col + 1)``.
    """
    small = _reduced(images, 8, 9)
    bits = small[:, :, :-1] > small[:, :, 1:]
    packed = np.packbits(bits.reshape(len(bits), HASH_BITS), axis=1)  # 8 bytes, most significant first
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def _reduced(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """`_area_resize` of the grayscale images, a chunk of images at a time."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"Pass images as an (N, height, width, 1 or 3) array, not shape {images.shape}.")
    parts = [_area_resize(_gray(images[i:i + _IMAGE_CHUNK]), rows, cols)
             for i in range(0, len(images), _IMAGE_CHUNK)]
    return np.concatenate(parts) if parts else np.empty((0, rows, cols), dtype=np.float32)


def _thumbnails(images: np.ndarray) -> np.ndarray:
    return _reduced(images, min(THUMBNAIL_SIDE, images.shape[1]), min(THUMBNAIL_SIDE, images.shape[2]))


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.bitwise_xor(a, b)).view(np.uint8).reshape(-1, 8)
    return _POPCOUNT[x].sum(axis=1, dtype=np.int64)


def _bands(max_bits: int) -> list[tuple[int, int]]:
    """``(shift, mask)`` of `max_bits` + 1 bands covering the 64 bits."""
    n = max_bits + 1
    edges = np.linspace(0, HASH_BITS, n + 1).round().astype(int)
    return [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def _candidate_pairs(hashes: np.ndarray, max_bits: int) -> np.ndarray:
    """``(P, 2)`` index pairs ``i < j`` whose hashes differ in at most `max_bits` bits."""
    n = len(hashes)
    found = []
    for shift, mask in _bands(max_bits):
        keys = (hashes >> np.uint64(shift)) & np.uint64(mask)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            members = np.sort(order[s:e])
            i, j = np.triu_indices(len(members), 1)
            found.append(np.stack([members[i], members[j]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.unique(np.concatenate(found).astype(np.int64), axis=0)
    close = _hamming(hashes[pairs[:, 0]], hashes[pairs[:, 1]]) <= max_bits
    return pairs[close]


def _defaults(max_bits, tolerance) -> tuple[int, float]:
    if max_bits is None or tolerance is None:
        from tlviz.diagnose.thresholds import threshold  # the check's thresholds are the defaults

        max_bits = threshold("duplicate-images", "max_bits") if max_bits is None else max_bits
        tolerance = threshold("duplicate-images", "tolerance") if tolerance is None else tolerance
    if not 0 <= int(max_bits) < HASH_BITS:
        raise ValueError(f"max_bits must be between 0 and {HASH_BITS - 1}, not {max_bits}.")
    if float(tolerance) < 0:
        raise ValueError(f"tolerance must be at least 0 grey levels, not {tolerance}.")
    return int(max_bits), float(tolerance)


def find_duplicates(images: np.ndarray, max_bits: int | None = None,
                    tolerance: float | None = None) -> DuplicateGroups:
    """Group exact and near-duplicate images.

    Args:
        images: ``uint8`` ``(N, H, W, 1 or 3)``, e.g. `ImageSet.images`.
        max_bits: two difference hashes within this many bits make a candidate pair.
            Defaults to the ``duplicate-images`` check's threshold.
        tolerance: a candidate pair is a duplicate when its 32 x 32 grayscale thumbnails
            differ by at most this many grey levels on average. Defaults to the check's threshold.

    Returns:
        A `DuplicateGroups`.
    """
    max_bits, tolerance = _defaults(max_bits, tolerance)
    images = np.asarray(images)
    n = int(len(images))
    if n < 2:
        return DuplicateGroups([], [], [], n, max_bits, tolerance)
    hashes = difference_hash(images)
    candidates = _candidate_pairs(hashes, max_bits)
    thumbs = _thumbnails(images)
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(candidates), _PAIR_CHUNK):
        part = candidates[start:start + _PAIR_CHUNK]
        diff = np.abs(thumbs[part[:, 0]] - thumbs[part[:, 1]]).mean(axis=(1, 2))
        for (i, j), d in zip(part, diff):
            if d <= tolerance:
                pairs.append((int(i), int(j), float(d)))
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for i in sorted({k for p in pairs for k in p[:2]}):
        members.setdefault(root(i), []).append(i)
    groups = [np.array(sorted(m), dtype=np.int64) for _, m in sorted(members.items())]
    exact = [bool(np.all(images[g] == images[g[0]])) for g in groups]
    return DuplicateGroups(groups, exact, pairs, n, max_bits, tolerance)


def thumbnail_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The mean absolute difference, in grey levels, of two images' 32 x 32 grayscale thumbnails.

    Args:
        a / b: ``uint8`` ``(H, W, 1 or 3)`` images of the same size.

    Returns:
        The difference (0 for identical pixels); `find_duplicates` compares it with its ``tolerance``.
    """
    t = _thumbnails(np.stack([np.asarray(a), np.asarray(b)]))
    return float(np.abs(t[0] - t[1]).mean())


def duplicate_group_ids(images: np.ndarray, max_bits: int | None = None, tolerance: float | None = None) -> np.ndarray:
    """A group id per image, duplicates sharing one (`DuplicateGroups.group_ids` of `find_duplicates`).

    Args:
        images / max_bits / tolerance: as `find_duplicates`.

    Returns:
        ``int64`` ``(N,)``.
    """
    return find_duplicates(images, max_bits, tolerance).group_ids()
