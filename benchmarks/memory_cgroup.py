"""A hard memory limit for one command, as a laptop or a batch system imposes it: a cgroup.

A child cgroup is made below the cgroup of this process (so every limit above it still holds)
with its memory limit set, and a command started with :meth:`MemoryCgroup.enter` as its
``preexec_fn`` runs inside it with all its descendants. Beyond the limit the kernel reclaims
page cache and then kills a process of the group (the out-of-memory killer); sampled RSS can
miss a short peak, the cgroup cannot. Both cgroup v2 (``memory.max``) and the v1 memory
controller (``memory.limit_in_bytes``) are supported; it needs the right to create cgroups
(root, or a delegated subtree).

    with MemoryCgroup(int(1.25 * 2**30), "survey") as group:
        subprocess.run(command, preexec_fn=group.enter, check=True)
        print(group.peak_bytes, group.oom_kills)
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroups() -> dict[str, str]:
    """Controller (``""`` for cgroup v2) -> this process's cgroup path, from /proc/self/cgroup."""
    groups = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = path
    return groups


def _v2_parent() -> Path | None:
    """This process's cgroup v2 folder if the memory controller can be given to a child."""
    path = _own_cgroups().get("")
    if path is None:
        return None
    for mount in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        folder = mount / path.lstrip("/")
        controllers = folder / "cgroup.controllers"
        if controllers.is_file() and "memory" in controllers.read_text().split():
            return folder
    return None


def _v1_parent() -> Path | None:
    path = _own_cgroups().get("memory")
    folder = CGROUP_ROOT / "memory" / (path or "").lstrip("/")
    return folder if path is not None and (folder / "memory.limit_in_bytes").is_file() else None


def cgroup_unavailable() -> str | None:
    """Why no memory cgroup can be made here, or None if :class:`MemoryCgroup` should work."""
    if not CGROUP_ROOT.is_dir():
        return f"{CGROUP_ROOT} does not exist (not Linux, or cgroups are not mounted)"
    parent = _v2_parent() or _v1_parent()
    if parent is None:
        return "no cgroup v2 with the memory controller and no cgroup v1 memory controller"
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable (needs root or a delegated cgroup)"
    return None


class MemoryCgroup:
    """A temporary child cgroup with a hard memory limit, removed on exit.

    Parameters
    ----------
    limit_bytes : int
        The memory limit [bytes]: RSS plus the page cache the group's processes use.
    label : str
        Part of the cgroup's folder name.

    Raises
    ------
    OSError
        If the cgroup cannot be made (see :func:`cgroup_unavailable`).
    """

    def __init__(self, limit_bytes: int, label: str = "outlier-dask") -> None:
        self.limit_bytes = int(limit_bytes)
        self.label = label
        self.path: Path | None = None
        self.version = 0

    def __enter__(self) -> MemoryCgroup:
        reason = cgroup_unavailable()
        if reason:
            raise OSError(f"no memory cgroup: {reason}")
        name = f"{self.label}-{uuid.uuid4().hex[:8]}"
        v2 = _v2_parent()
        if v2 is not None:
            if "memory" not in (v2 / "cgroup.subtree_control").read_text().split():
                (v2 / "cgroup.subtree_control").write_text("+memory")
            self.path, self.version = v2 / name, 2
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(self.limit_bytes))
            (self.path / "memory.swap.max").write_text("0")
        else:
            parent = _v1_parent()
            assert parent is not None
            self.path, self.version = parent / name, 1
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit_bytes))
            swap_limit = self.path / "memory.memsw.limit_in_bytes"
            if swap_limit.exists():  # no swapping past the limit either
                swap_limit.write_text(str(self.limit_bytes))
        return self

    def enter(self) -> None:
        """Move the calling process into the cgroup (use as ``Popen(preexec_fn=...)``)."""
        assert self.path is not None
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    @property
    def peak_bytes(self) -> int:
        """Highest memory use of the group so far [bytes], page cache included; -1 if unknown."""
        assert self.path is not None
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        file = self.path / name
        return int(file.read_text()) if file.exists() else -1

    @property
    def oom_kills(self) -> int:
        """Processes the kernel killed in this group for exceeding the limit."""
        assert self.path is not None
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def __exit__(self, *exc: object) -> None:
        if self.path is None:
            return
        # The group must be empty to be removed: stop what is left of the command's tree.
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        for _ in range(100):
            try:
                self.path.rmdir()
                break
            except OSError:
                time.sleep(0.05)
