"""Where fine-tuning jobs run: the two executors of the job system, this machine or a Ray cluster.

Without configuration every job runs in a local worker process (`tlviz.jobs.worker`), and
``ray`` is never imported. With ``TLVIZ_RAY_ADDRESS`` set (``auto``, ``host:6379`` or
``ray://host:10001``) the run kinds (fine-tuning runs, sweeps, learning-rate tests) are
submitted to that Ray cluster instead (`tlviz.jobs.ray_executor`); analyses always run here.

This module decides and describes; it never imports ``ray`` itself:

- `default_executor`, `choose_executor` — ``"local"`` or ``"ray"``;
- `ray_address`, `check_reachable` — the configured cluster, and a quick
  network probe that refuses an unreachable one with `ClusterUnreachable`
  before anything is created (``ray.init`` on a dead address waits minutes);
- `local_where` — what a run records about where it ran (`tlviz.finetune.store.describe_where` says it)
  (``executor``, ``node``, ``device``) and the one line the pages show;
- `describe_executor`, `last_cluster` — the sidebar's line.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

from tlviz import config
from tlviz.errors import ClusterUnreachable, ConfigError, RunRefused

ENV_RAY_ADDRESS = "TLVIZ_RAY_ADDRESS"
EXECUTORS = ("local", "ray")
#: Seconds the network probe of the cluster's address waits.
PROBE_TIMEOUT_S = 3.0
#: The file in which ``ray start --head`` leaves the address of the cluster it started (what ``auto`` reads).
RAY_CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")
#: The default ports of a Ray head node: the GCS (plain address) and the Ray Client server (``ray://``).
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001
#: The file (in the ``.jobs`` folder) where the last Ray job recorded what the cluster holds.
CLUSTER_FILE = ".ray_cluster.json"


def ray_address() -> str | None:
    """The Ray cluster runs go to: ``TLVIZ_RAY_ADDRESS``, checked; None when unset (local runs).

    Raises:
        ConfigError: the value is not ``auto``, ``host:port`` or ``ray://host:port``.
    """
    text = config.raw(ENV_RAY_ADDRESS)
    if text is None:
        return None
    parse_address(text)
    return text


def parse_address(text: str) -> tuple[str, str | None, int | None]:
    """Split a Ray address into ``(scheme, host, port)``.

    Args:
        text: ``auto``, ``host[:port]`` (the head's GCS, port 6379 by default) or
            ``ray://host[:port]`` (Ray Client, port 10001 by default).

    Returns:
        ``("auto", None, None)``, ``("gcs", host, port)`` or ``("client", host, port)``.

    Raises:
        ConfigError: anything else, with the forms that work.
    """
    t = text.strip()
    if t.lower() == "auto":
        return "auto", None, None
    scheme, rest = ("client", t[len("ray://"):]) if t.lower().startswith("ray://") else ("gcs", t)
    host, _, port_text = rest.rstrip("/").rpartition(":") if ":" in rest else (rest.rstrip("/"), "", "")
    port = DEFAULT_CLIENT_PORT if scheme == "client" else DEFAULT_GCS_PORT
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            port = -1
    ok = bool(host) and "/" not in host and " " not in host and "://" not in rest and 0 < port < 65536
    if not ok:
        raise ConfigError(f"{ENV_RAY_ADDRESS}={text!r} is not a Ray address. Set it to `auto` (the cluster started "
                          "on this machine with `ray start --head`), `host:6379` (the head node) or "
                          "`ray://host:10001` (Ray Client), or unset it to run on this machine.")
    return scheme, host, port


def default_executor() -> str:
    """``"ray"`` when ``TLVIZ_RAY_ADDRESS`` is set, else ``"local"``."""
    return "ray" if ray_address() else "local"


def choose_executor(executor: str | None) -> str:
    """The executor a job uses.

    Args:
        executor: ``"local"``, ``"ray"`` or None (the configured one: `default_executor`).

    Returns:
        ``"local"`` or ``"ray"``.

    Raises:
        RunRefused: an unknown executor, or ``"ray"`` without ``TLVIZ_RAY_ADDRESS``.
    """
    if executor is None:
        try:
            return default_executor()
        except ConfigError as exc:
            raise RunRefused(str(exc)) from None
    if executor not in EXECUTORS:
        raise RunRefused(f"Unknown executor {executor!r}. Use one of: {', '.join(EXECUTORS)}.")
    if executor == "ray" and not ray_address():
        raise RunRefused(f"Running on Ray needs {ENV_RAY_ADDRESS} (e.g. `auto` or `ray://head:10001`); it is unset.")
    return executor


def ray_installed() -> bool:
    """Whether ``ray`` can be imported here (looked up, not imported)."""
    return importlib.util.find_spec("ray") is not None


def resolve_auto() -> str | None:
    """The address ``auto`` stands for: the cluster ``ray start --head`` started on this machine.

    Returns:
        ``host:port``, or None when no cluster is known on this machine.
    """
    try:
        text = RAY_CURRENT_CLUSTER.read_text().strip()
    except OSError:
        return None
    return text or None


def check_reachable(address: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Probe the cluster's address over the network before any job is created.

    A Ray address that answers nothing makes ``ray.init`` wait for minutes;
    this refuses it in seconds, and a missing ``ray`` package too.

    Args:
        address: the Ray address. Defaults to `ray_address()`.
        timeout: seconds to wait for the connection. Defaults to `PROBE_TIMEOUT_S`.

    Returns:
        The address to pass to ``ray.init`` (``auto`` resolved to ``host:port``; ``ray://`` kept).

    Raises:
        ClusterUnreachable: ``ray`` is not installed, ``auto`` finds no cluster, or nothing answers at the
            address; the message says what was tried and what to do.
    """
    address = address or ray_address()
    if not address:
        raise ClusterUnreachable(f"No Ray cluster is configured ({ENV_RAY_ADDRESS} is unset).")
    if not ray_installed():
        raise ClusterUnreachable(f"{ENV_RAY_ADDRESS}={address} but the `ray` package is not installed here. "
                                 "Install it with `pip install -r requirements-ray.txt` (or `pip install "
                                 "tlviz[ray]`), or unset the variable to run on this machine.")
    scheme, host, port = parse_address(address)
    target = address
    if scheme == "auto":
        found = resolve_auto()
        if found is None:
            raise ClusterUnreachable(f"{ENV_RAY_ADDRESS}=auto but no Ray cluster runs on this machine (none was "
                                     "started with `ray start --head`). Start one, set the variable to the "
                                     "cluster's address, or run on this machine.")
        scheme, host, port = parse_address(found)
        target = found
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        what = "Ray Client server" if scheme == "client" else "Ray head node (GCS)"
        raise ClusterUnreachable(f"The Ray cluster at {address} cannot be reached: nothing answers at "
                                 f"{host}:{port} ({what}; {exc.strerror or exc}). Check that the cluster runs and "
                                 f"that {ENV_RAY_ADDRESS} names it, or run on this machine.") from None
    return target


def local_where(device: dict | None = None) -> dict:
    """What a run on this machine records about where it ran.

    Args:
        device: `tlviz.finetune.device.setup_device()`'s answer. Defaults to an unknown device.

    Returns:
        ``{"executor": "local", "node": <host name>, "device": ..., "device_name": ...}``.
    """
    d = device or {}
    return {"executor": "local", "node": socket.gethostname(), "device": d.get("device", "?"),
            "device_name": d.get("device_name", ""), "pid": os.getpid()}


def describe_executor() -> str:
    """Where new runs go, in words (never raises: a bad setting is named)."""
    try:
        address = ray_address()
    except ConfigError as exc:
        return f"this machine ({exc})"
    return f"Ray cluster `{address}`" if address else "this machine (worker processes)"


def last_cluster(root=None) -> dict | None:
    """What the last Ray job found in the cluster (``nodes``, ``CPU``, ``GPU``, ``address``, ``ray_version``).

    Args:
        root: the runs folder. Defaults to `tlviz.finetune.store.runs_dir()`.

    Returns:
        The dict, or None when no Ray job ran yet.
    """
    from tlviz.finetune.store import runs_dir
    from tlviz.jsonfiles import read_json

    data = read_json(runs_dir(root) / ".jobs" / CLUSTER_FILE)
    return data if isinstance(data, dict) else None
