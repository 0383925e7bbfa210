"""Test hooks in the processes a run starts (the command, its workers, a cluster's workers)."""

from __future__ import annotations

import os
from pathlib import Path


def python_path_with_hook(folder: Path, source: str) -> str:
    """A ``PYTHONPATH`` under which every Python process runs ``source`` as its
    ``sitecustomize`` (written into ``folder``), ahead of the current ``PYTHONPATH``."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(source)
    return os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
