"""Whether a process still runs: a leaf helper shared by the job system and the run store."""
from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid) -> bool:
    """Whether a process with this id runs on this machine (zombies count as dead)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
