"""The train / validation split of a run: stratified by class, duplicates kept on one side.

Public API: `stratified_split(labels, val_fraction, seed, groups)` (the split) and
`split_groups(images, cache, image_key)` (the duplicate-group ids it is given, found once per
image set and kept in the activation cache).
"""

from __future__ import annotations

import numpy as np

from tlviz.contentkeys import pixels_key


def stratified_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and validation, the same share of every class.

    Args:
        labels: class index per image.
        val_fraction: share of each class held out. Defaults to `0.2`.
        seed: seeds the shuffle. Defaults to `0`.
        groups: a group id per image (`tlviz.duplicates.duplicate_group_ids`): the images of
            one group always land on the same side, so a copy of a validation image is never
            trained on. A group belongs to the class of its first image, and whole groups are
            drawn for validation until the class's share is reached. Defaults to `None` (every
            image its own group; the split is then the same as with all-distinct groups).

    Returns:
        ``(train_idx, val_idx)``, sorted. A class with a single image (or a single group) goes to
        training; every class with two or more groups has at least one in each part.
    """
    labels = np.asarray(labels)
    n = len(labels)
    groups = np.arange(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if len(groups) != n:
        raise ValueError(f"`groups` must hold one id per image: {len(groups)} ids for {n} images.")
    order = np.argsort(groups, kind="stable")
    _, starts = np.unique(groups[order], return_index=True)
    members = sorted(np.split(order, starts[1:]), key=lambda m: m[0]) if n else []  # by first image
    home = np.array([labels[m[0]] for m in members]) if members else np.zeros(0, labels.dtype)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        mine = np.flatnonzero(home == c)  # this class's groups (positions in `members`), by first image
        perm = rng.permutation(mine)
        n_val = int(round(int(np.sum(labels == c)) * val_fraction))
        k = 0
        if len(perm) >= 2:
            n_val, taken = max(n_val, 1), 0
            while k < len(perm) - 1 and taken < n_val:  # whole groups; at least one stays in training
                taken += len(members[perm[k]])
                k += 1
        val.extend(members[g] for g in perm[:k])
        train.extend(members[g] for g in perm[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(train).astype(np.int64), cat(val).astype(np.int64)


def split_groups(images: np.ndarray, cache=None, image_key: str | None = None) -> tuple[np.ndarray, dict]:
    """Duplicate groups of an image set, for the split (`tlviz.duplicates.duplicate_group_ids`), found once per set.

    Args:
        images: the ``uint8`` images.
        cache: a `tlviz.finetune.cache.ActivationCache` that keeps the group ids for the next run on the same
            images. Defaults to `None`.
        image_key: `tlviz.contentkeys.pixels_key` of `images`. Defaults to computing it.

    Returns:
        ``(group ids, {"groups": groups of two or more, "images": images in them})``.
    """
    from tlviz.duplicates import duplicate_group_ids

    key = None
    ids = None
    if cache is not None:
        key = cache.key("duplicates", image_key or pixels_key(images), "-", "groups-v1")
        ids = cache.get(key, count=False)
    if ids is None:
        ids = duplicate_group_ids(images)
        if cache is not None:
            cache.put(key, ids)
    ids = np.asarray(ids, dtype=np.int64)
    sizes = np.bincount(ids) if len(ids) else np.zeros(0, np.int64)
    return ids, {"groups": int(np.sum(sizes >= 2)), "images": int(np.sum(sizes[sizes >= 2]))}
