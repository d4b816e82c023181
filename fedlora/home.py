"""Where fedlora keeps its data: ``$FEDLORA_HOME`` or the user's cache directory.

The embedded default model, generated data sets and client checkpoints live here; nothing is
written anywhere else unless a command is told to.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

ENV_VAR = "FEDLORA_HOME"


def fedlora_home() -> Path:
    """The data directory (created on demand)."""
    raw = os.environ.get(ENV_VAR)
    path = Path(raw).expanduser() if raw else Path(user_cache_dir("fedlora"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    path = fedlora_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
