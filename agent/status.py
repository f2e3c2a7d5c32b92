"""The trainer's status file: a small JSON snapshot of training progress, written atomically.

``runs/<run>/status.json`` is how the trainer tells the launcher's console (and anyone else: ``watch
cat runs/<run>/status.json``) how far it is, without the launcher parsing its log. The trainer
rewrites it about once a second while it collects experience and at each phase change; a reader
judges liveness by ``updated`` (wall-clock seconds) and ``phase``. This module imports nothing heavy
(no torch, no SB3) so that the launcher can read the file cheaply.

Fields (all optional for readers except ``updated``):
    version, pid, device, phase (``starting``, ``collecting``, ``updating``, ``finished``,
    ``interrupted``, ``failed``), updated, started, num_timesteps, start_timesteps, total_timesteps,
    steps_per_second, eta_seconds, episodes, last_episode ({return, route_completion, collisions,
    lap_completed, length}), last_update_seconds (duration of the last PPO update), error.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
STATUS_VERSION = 1
#: phases after which no more reports come.
FINAL_PHASES = ("finished", "interrupted", "failed")


def status_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STATUS_FILE


def write_status(path: str | Path, status: dict[str, Any]) -> None:
    """Replaces ``path`` with ``status`` as JSON in one rename, so a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(status, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The last status written to ``path``, or None if there is none (yet) or it is unreadable."""
    try:
        with open(path) as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or not isinstance(status.get("updated"), (int, float)):
        return None
    return status
