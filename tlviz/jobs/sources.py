"""Opening an image source again in a worker process (for the normalization comparison's resize variants).

The resize variants decode the original files again: a server folder is re-opened by its
path, an uploaded ``.zip`` is saved once per content under ``<runs dir>/.inputs``. A source
that cannot be re-opened (built by hand) runs without resize variants, and the job's
``notes`` say so (`NO_SOURCE_NOTE`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tlviz.errors import TlvizError
from tlviz.finetune.store import runs_dir

NO_SOURCE_NOTE = ("The resize methods were not compared: the original image files cannot be opened again in the "
                  "worker process (load the image set from a folder or a .zip to compare them).")


def can_reopen(source) -> bool:
    """Whether a worker process can open `source` again (for the resize variants): a folder or a zip."""
    origin = getattr(source, "origin", None)
    return isinstance(origin, tuple) and len(origin) == 2 and origin[0] in ("folder", "zip")


def source_spec(source, root=None) -> dict | None:
    """What the worker needs to open `source` again (an uploaded zip is saved once), or None.

    Args:
        source: the `ImageSource` the images came from.
        root: the runs folder. Defaults to `runs_dir()`.

    Returns:
        ``{"kind": "folder" or "zip", "path", "name"}``, or None when it cannot be opened again.
    """
    if not can_reopen(source):
        return None
    kind, value = source.origin
    if kind == "folder":
        return {"kind": "folder", "path": str(value), "name": source.name}
    sha = hashlib.sha256(value).hexdigest()[:32]
    path = runs_dir(root) / ".inputs" / f"{sha}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(value)
        os.replace(tmp, path)
    os.utime(path)
    return {"kind": "zip", "path": str(path), "name": source.name}


def open_source(spec: dict | None, notes: list[str]):
    """The `ImageSource` of `source_spec`'s dict, or None (a sentence saying why is added to `notes`)."""
    if not spec:
        return None
    from tlviz.imagesets import ImageSource

    try:
        if spec["kind"] == "folder":
            return ImageSource.from_folder(spec["path"])
        return ImageSource.from_zip(Path(spec["path"]).read_bytes(), spec.get("name") or "upload.zip")
    except (OSError, TlvizError) as exc:
        notes.append(f"The resize methods were not compared: the original images could not be opened again "
                     f"({exc}).")
        return None
