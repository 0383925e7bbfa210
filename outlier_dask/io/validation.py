"""Checks made before any heavy work, each in one place.

A run over hundreds of exposures must not fail an hour in on something its first seconds could
have seen. :func:`~outlier_dask.api.detect_outliers` reads every member's metadata, then calls
the checks here before it builds a pixel map or runs a graph (the free-space check, which needs
the plan's regions, runs right after the plan and still before any graph). Each refusal is a
:class:`ValueError` subclass whose one-line message names the file, member, parameter or folder
and what is wrong; conditions the reference tolerates are logged as warnings that say which
fallback is used. ``docs/security.md`` lists every check and every fallback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from outlier_dask.geometry.output_grid import footprints_from_s_region
from outlier_dask.io.association import AssociationError
from outlier_dask.io.members import Member, UsablePixels, find_usable_pixels
from outlier_dask.parameters import OutlierParameters, ParameterError

__all__ = [
    "DiskFullError",
    "OutputError",
    "SchedulerUnreachableError",
    "check_free_space",
    "check_inputs",
    "check_output_paths",
    "check_work_dir",
    "check_scheduler_reachable",
    "check_tls_files",
    "disk_full_explained",
    "prepare_output_dir",
    "product_bytes",
]

log = logging.getLogger(__name__)

#: Seconds to wait for a TCP connection to a scheduler before refusing the run.
SCHEDULER_CONNECT_TIMEOUT_S = 5.0
#: Port of a ``tcp://`` or ``tls://`` address that gives none (distributed's default).
DEFAULT_SCHEDULER_PORT = 8786
#: Footprints closer than this (degrees, ~0.04 arcsec) count as touching, not overlapping.
OVERLAP_TOLERANCE_DEG = 1e-5
#: Names listed in one warning before "and N more".
LISTED_NAMES = 5
#: ``meta.wcsinfo`` keys of the first input that orient and scale the output grid.
GRID_WCSINFO_KEYS = ("ra_ref", "dec_ref", "roll_ref", "v3yangle", "vparity")
FLOAT32_BYTES = 4


class OutputError(ValueError):
    """An output folder or product cannot be written; the message names it."""


class SchedulerUnreachableError(ValueError):
    """The scheduler address does not accept connections; the message names it."""


class DiskFullError(OSError):
    """A disk filled up during the run; the message names the folders and their free space."""


# --------------------------------------------------------------------------- parameters


def check_tls_files(params: OutlierParameters) -> None:
    """Each ``tls_*`` file given must be readable."""
    for name in ("tls_ca_file", "tls_cert", "tls_key"):
        value = getattr(params, name)
        if value is not None and not (Path(value).is_file() and os.access(value, os.R_OK)):
            raise ParameterError(f"{name}: cannot read the file {value}")


def check_scheduler_reachable(
    address: str,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = SCHEDULER_CONNECT_TIMEOUT_S,
) -> None:
    """Connect to a ``tcp://`` or ``tls://`` scheduler address, and for ``tls://`` complete a
    TLS handshake with ``ssl_context``, so a wrong address or certificate is reported at once.

    Other schedulers (``processes``, ``local-cluster``, ``ucx://``, ...) are not checked.

    Raises
    ------
    ParameterError
        If the address has no readable host and port, or is ``tls://`` with no TLS context.
    SchedulerUnreachableError
        If nothing accepts a connection within ``timeout`` seconds, or the TLS handshake fails.
    """
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parts.hostname, parts.port or DEFAULT_SCHEDULER_PORT
    except ValueError:
        host = None
    if not host:
        raise ParameterError(f"scheduler: cannot read a host and port in {address!r}")
    if parts.scheme == "tls" and ssl_context is None:
        raise ParameterError(
            f"scheduler: {address} needs TLS: give tls_ca_file (and tls_cert, tls_key when the "
            "scheduler asks for client certificates), or set distributed.comm.tls in dask's "
            "configuration"
        )
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            if parts.scheme == "tls":
                with ssl_context.wrap_socket(connection, server_hostname=host):
                    pass
    except ssl.SSLError as exc:
        raise SchedulerUnreachableError(
            f"scheduler: TLS handshake with {address} failed ({exc.reason or exc}); check the "
            "certificate authority and client certificate"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise SchedulerUnreachableError(
            f"scheduler: cannot connect to {address} within {timeout:g} s ({reason}); "
            "is the scheduler running and the port open?"
        ) from None


# --------------------------------------------------------------------------- inputs


def check_inputs(members: Sequence[Member], params: OutlierParameters) -> None:
    """Every check of the inputs' arrays and geometry a run needs (two inputs or more).

    Raises
    ------
    AssociationError
        If an input lacks DQ or ERR of SCI's shape, if no input has a usable pixel, if an
        input's ``S_REGION`` cannot be read, or if the first input lacks the ``meta.wcsinfo``
        keys that orient the output grid.
    """
    check_arrays(members, params)
    check_usable_pixels(members, params)
    if params.resample_data:
        check_grid_metadata(members[0])
        warn_about_overlap(members, [_footprints(m) for m in members])


def check_arrays(members: Sequence[Member], params: OutlierParameters) -> None:
    """DQ and ERR must have the shape of SCI; VAR_RNOISE may fall back to weight 1.

    ERR is refused rather than read as 0 (what the reference does with a missing ERR):
    with no noise term every pixel that differs from the median by more than the blot's
    derivative would be flagged, which is not what anyone running the step wants.
    """
    for member in members:
        for name in ("DQ", "ERR"):
            shape = member.source.shape_of(name)
            if shape != member.shape:
                state = "is missing" if shape is None else f"has shape {_shape_text(shape)}"
                raise AssociationError(
                    f"{member.name}: {name} {state}, SCI has {_shape_text(member.shape)}; "
                    f"the step needs {name} of SCI's shape"
                )
    if params.weight_type == "ivm":
        unusable = [m.name for m in members if not m.has_var_rnoise]
        if unusable:
            log.warning(
                "VAR_RNOISE is missing or not of SCI's shape in %d input(s) (%s): their usable "
                "pixels get drizzle weight 1 instead of 1/VAR_RNOISE, as in the reference",
                len(unusable),
                _names(unusable),
            )


def usable_pixels_of(member: Member, good_bits: str, rnoise: bool) -> UsablePixels:
    """What ``member``'s usable pixels hold: as found when it was read, if that was under the
    same ``good_bits`` (and VAR_RNOISE use), else looked for now."""
    found = member.usable
    if found is not None and (found.good_bits, found.rnoise) == (good_bits, rnoise):
        return found
    return find_usable_pixels(member.source, member.shape, good_bits, rnoise)


def check_usable_pixels(members: Sequence[Member], params: OutlierParameters) -> None:
    """Refuse a run where no input has a usable pixel; warn about each input without one.

    An input whose every pixel is bad adds nothing to the median and can have nothing
    flagged; the others are still worth checking, so the run goes on. When every input is
    like that the usual cause is a wrong ``good_bits``, and the run stops. An input whose ERR
    is 0 or not finite at every usable pixel is refused (the flag rule's noise would be 0);
    with ``weight_type="ivm"``, one whose VAR_RNOISE is 0, negative or not finite there gets
    drizzle weight 0 everywhere, as in the reference, and a warning says so.
    """
    rnoise = {m.name: params.weight_type == "ivm" and m.has_var_rnoise for m in members}
    found = {m.name: usable_pixels_of(m, params.good_bits, rnoise[m.name]) for m in members}
    empty = [name for name, usable in found.items() if not usable.pixels]
    if len(empty) == len(members):
        raise AssociationError(
            f"no input has a usable pixel: every pixel is NaN or has a bad DQ bit under "
            f"good_bits={params.good_bits!r}; check good_bits"
        )
    for name, usable in found.items():
        if usable.pixels and not usable.err:
            raise AssociationError(
                f"{name}: ERR is 0 or not finite at every usable pixel; the flag rule "
                "compares each pixel with the median in units of ERR, so it needs a real ERR"
            )
    if empty:
        log.warning(
            "%d input(s) have no usable pixel (NaN or bad DQ under good_bits=%r everywhere): %s; "
            "they add nothing to the median and nothing in them can be flagged",
            len(empty),
            params.good_bits,
            _names(empty),
        )
    weightless = [n for n, u in found.items() if u.pixels and not u.var_rnoise]
    if weightless:
        log.warning(
            "VAR_RNOISE is 0, negative or not finite at every usable pixel of %d input(s) "
            "(%s): with weight_type='ivm' their drizzle weights are 0, as in the reference, so "
            "they add nothing to the median (their own pixels are still flagged)",
            len(weightless),
            _names(weightless),
        )


def check_grid_metadata(first: Member) -> None:
    """The first input orients and scales the output grid: its ``wcsinfo`` keys must be set."""
    bad = [key for key in GRID_WCSINFO_KEYS if not _finite_number(first.wcsinfo.get(key))]
    if not bad and first.wcsinfo["vparity"] not in (1, -1):
        bad.append("vparity")
    if bad:
        raise AssociationError(
            f"{first.name}: meta.wcsinfo {', '.join(bad)} missing or invalid; the first input "
            "orients the output grid (vparity must be 1 or -1)"
        )


def _finite_number(value: object) -> bool:
    try:
        return bool(np.isfinite(float(value)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _footprints(member: Member) -> list[np.ndarray]:
    try:
        return footprints_from_s_region(member.wcsinfo["s_region"])
    except ValueError as exc:
        message = f"{member.name}: cannot read meta.wcsinfo.s_region ({exc})"
        raise AssociationError(message) from None


def _tangent_plane(polygons: list[np.ndarray]) -> list[np.ndarray] | None:
    """Polygons of (RA, Dec) degrees projected on the plane tangent at their mean direction.

    Returns None if some vertex is 80 degrees or more from that direction (no single plane).
    """
    lon, lat = np.deg2rad(np.vstack(polygons)).T
    xyz = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    centre = xyz.mean(axis=0)
    centre /= np.linalg.norm(centre)
    pole = np.array([0.0, 0.0, 1.0]) if abs(centre[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    east = np.cross(pole, centre)
    east /= np.linalg.norm(east)
    north = np.cross(centre, east)
    depth = xyz @ centre
    if depth.min() < np.cos(np.deg2rad(80.0)):
        return None
    plane = np.rad2deg(np.column_stack([xyz @ east, xyz @ north]) / depth[:, None])
    bounds = np.cumsum([0] + [len(p) for p in polygons])
    return [plane[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _convex_overlap(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Whether two convex polygons share more than a sliver (separating-axis test)."""
    for polygon in (a, b):
        edges = np.roll(polygon, -1, axis=0) - polygon
        normals = np.column_stack([-edges[:, 1], edges[:, 0]])
        lengths = np.linalg.norm(normals, axis=1)
        normals = normals[lengths > 0] / lengths[lengths > 0, None]
        pa, pb = a @ normals.T, b @ normals.T
        apart = (pa.max(axis=0) <= pb.min(axis=0) + tolerance) | (
            pb.max(axis=0) <= pa.min(axis=0) + tolerance
        )
        if apart.any():
            return False
    return True


def isolated_groups(
    members: Sequence[Member], footprints: Sequence[Sequence[np.ndarray]]
) -> list[str]:
    """Exposure groups whose footprints overlap no other group's.

    ``footprints`` holds each member's sky polygons (from its ``S_REGION``), taken as convex
    (JWST writes the four corners of a detector).
    """
    polygons, owners = [], []
    for member, member_footprints in zip(members, footprints, strict=True):
        for polygon in member_footprints:
            polygons.append(polygon)
            owners.append(member.group_id)
    plane = _tangent_plane(polygons)
    if plane is None:
        return []
    owners_array = np.array(owners, dtype=object)
    low = np.array([p.min(axis=0) for p in plane])
    high = np.array([p.max(axis=0) for p in plane])
    isolated = []
    for group in dict.fromkeys(owners):
        own = np.flatnonzero(owners_array == group)
        touches = False
        for i in own:
            near = (
                (owners_array != group)
                & np.all(low < high[i] - OVERLAP_TOLERANCE_DEG, axis=1)
                & np.all(high > low[i] + OVERLAP_TOLERANCE_DEG, axis=1)
            )
            if any(
                _convex_overlap(plane[i], plane[j], OVERLAP_TOLERANCE_DEG)
                for j in np.flatnonzero(near)
            ):
                touches = True
                break
        if not touches:
            isolated.append(group)
    return isolated


def warn_about_overlap(
    members: Sequence[Member], footprints: Sequence[Sequence[np.ndarray]]
) -> None:
    """Warn when exposure groups do not overlap: their outliers cannot be told from sources.

    The step compares each exposure with the median of all exposures; where only one exposure
    group covers the sky the median is that group's own mosaic. The reference runs anyway and
    its products are valid, so this is a warning, not a refusal.
    """
    groups = list(dict.fromkeys(m.group_id for m in members))
    if len(groups) == 1:
        log.warning(
            "all %d inputs belong to one exposure group (%s): the median is that exposure "
            "itself, so outliers cannot be told from sources; the step needs dithered exposures",
            len(members),
            groups[0],
        )
        return
    isolated = isolated_groups(members, footprints)
    if len(isolated) == len(groups):
        log.warning(
            "no two of the %d exposure groups overlap on the sky (S_REGION): every part of the "
            "median comes from one exposure only, so outliers cannot be told from sources",
            len(groups),
        )
    elif isolated:
        log.warning(
            "%d exposure group(s) overlap no other group on the sky (S_REGION): %s; their "
            "outliers cannot be told from sources",
            len(isolated),
            _names(isolated),
        )


# --------------------------------------------------------------------------- outputs


def check_work_dir(work_dir: Path) -> None:
    """Refuse a ``work_dir`` that exists and is not a folder (it is made if missing)."""
    if work_dir.exists() and not work_dir.is_dir():
        raise OutputError(f"work_dir: {work_dir} exists and is not a folder")


def prepare_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and check that files can be created in it.

    Only the folder itself is created: a parent that does not exist is more likely a typo
    (``/typo/deep/out``) than a tree to make, and is refused.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output_dir: {out_dir} exists and is not a folder")
    parent = out_dir.absolute().parent
    if not out_dir.exists() and not parent.exists():
        raise OutputError(
            f"output_dir: cannot create {out_dir}: its parent folder {parent} does not exist"
        )
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output_dir: cannot create {out_dir} ({exc.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"output_dir: {out_dir} is not writable")


def check_output_paths(
    products: Sequence[tuple[str, Path]],
    inputs: Sequence[Path],
    out_dir: Path,
    overwrite: bool,
) -> None:
    """Refuse products that would leave ``out_dir``, replace an input, or collide.

    Parameters
    ----------
    products : sequence of (str, Path)
        Each product with the input (or product) name it is made for.
    inputs : sequence of Path
        The input files, never to be written.
    out_dir : Path
        The output folder; every product must be directly in it.
    overwrite : bool
        Whether existing products may be replaced.
    """
    folder = out_dir.resolve()
    resolved_inputs = {p.resolve() for p in inputs}
    seen: dict[Path, str] = {}
    for name, path in products:
        target = path.parent.resolve() / path.name
        if target.parent != folder:
            raise OutputError(f"{name}: the product {path} would be written outside {out_dir}")
        if target in resolved_inputs or path.resolve() in resolved_inputs:
            raise OutputError(f"{name}: the product {path} would overwrite an input")
        if target in seen:
            raise OutputError(
                f"{seen[target]} and {name} would both write {path.name}; rename one of them"
            )
        seen[target] = name
        if path.is_dir():
            raise OutputError(f"{name}: the product {path} exists and is a folder")
        if path.exists() and not overwrite:
            raise OutputError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")


def product_bytes(
    members: Sequence[Member],
    params: OutlierParameters,
    grid_pixels: int,
    n_groups: int,
) -> int:
    """Bytes the products will take: each ``_crf`` file about the size of its input, plus the
    intermediate products (full-grid mosaic and weight per group, the median, a blot per
    input) with ``save_intermediate_results``.
    """
    total = sum(m.path.stat().st_size for m in members if m.path is not None)
    if params.save_intermediate_results:
        total += FLOAT32_BYTES * grid_pixels
        if params.resample_data:
            total += 2 * FLOAT32_BYTES * grid_pixels * n_groups
            total += sum(FLOAT32_BYTES * m.shape[0] * m.shape[1] for m in members if m.path)
    return total


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(needs: Sequence[tuple[str, Path, int]]) -> None:
    """Refuse a run whose products and scratch data would not fit on their disks.

    Parameters
    ----------
    needs : sequence of (str, Path, int)
        What (``"products"``, ``"scratch"``), the folder it goes to (created later if
        missing), and its size estimate in bytes. Folders on one file system add up.

    Raises
    ------
    OutputError
        Naming the folder, the bytes needed and the bytes free.
    """
    by_device: dict[int, list[tuple[str, Path, int]]] = {}
    for what, folder, size in needs:
        existing = _existing_ancestor(folder)
        by_device.setdefault(existing.stat().st_dev, []).append((what, existing, size))
    for entries in by_device.values():
        needed = sum(size for _, _, size in entries)
        free = shutil.disk_usage(entries[0][1]).free
        if needed > free:
            parts = " + ".join(f"{what} {_size_text(size)}" for what, _, size in entries if size)
            folders = " and ".join(dict.fromkeys(str(folder) for _, folder, _ in entries))
            raise OutputError(
                f"not enough free disk space in {folders}: the run needs about "
                f"{_size_text(needed)} ({parts}), {_size_text(free)} free"
            )


@contextlib.contextmanager
def disk_full_explained(folders: Sequence[tuple[str, Path]]) -> Iterator[None]:
    """Turn a "no space left" error into one naming the run's folders and their free space."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        free = ", ".join(
            f"{what} {folder}: {_size_text(shutil.disk_usage(_existing_ancestor(folder)).free)} "
            "free"
            for what, folder in folders
        )
        error = DiskFullError(
            f"disk full{where} ({free}); nothing was kept: free some space or choose other "
            "folders (--output-dir, --work-dir)"
        )
        error.errno = exc.errno
        raise error from exc


# --------------------------------------------------------------------------- messages


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED_NAMES])
    more = len(names) - LISTED_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


def _shape_text(shape: Sequence[int]) -> str:
    return " x ".join(str(n) for n in shape)


def _size_text(size: int) -> str:
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"
