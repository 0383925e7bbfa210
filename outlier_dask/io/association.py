"""Stage 3 image associations: members, product name and exposure groups (algorithm.md §4)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AssociationError",
    "AssociationMember",
    "association_id",
    "group_id_from_observation",
    "product_name_for_files",
    "read_association",
]

OBSERVATION_KEYS = (
    "program_number",
    "observation_number",
    "visit_number",
    "visit_group",
    "sequence_id",
    "activity_id",
    "exposure_number",
)


def product_name_for_files(stems: list[str]) -> str:
    """The product name of a list of inputs given without an association.

    The underscore-separated fields the inputs' stems share from the start
    (``jw01234001001_01101_00001_nrca1`` and ``jw01234001001_01101_00002_nrca1`` give
    ``jw01234001001_01101``, never a name cut inside a field such as ``..._0000``); with no
    shared field, the first input's stem, as jwst names the products of a list after its first
    member.

    Parameters
    ----------
    stems : list of str
        The inputs' names without extension and suffix, in input order (at least one).
    """
    fields = [stem.split("_") for stem in stems]
    shared: list[str] = []
    for column in zip(*fields, strict=False):
        if any(field != column[0] for field in column):
            break
        shared.append(column[0])
    return "_".join(shared) or stems[0]


class AssociationError(ValueError):
    """The association or one of its members cannot be used; the message names which."""


@dataclass(frozen=True)
class AssociationMember:
    """One science member of an association.

    Attributes
    ----------
    path : Path
        The member's file, resolved against the association's folder.
    group_id : str or None
        The association's ``group_id`` for the member, if it gives one.
    """

    path: Path
    group_id: str | None = None


def read_association(asn_path: str | Path) -> tuple[str, list[AssociationMember]]:
    """The product name and science members of an image3 association file.

    Raises
    ------
    AssociationError
        If the file is missing, is not JSON, is not an image association, has no product, has
        a product name with a folder in it, has no science member, names a member twice, or
        names a member file that does not exist. Member paths may lead anywhere (they are only
        read); products are named from the members' file names alone.
    """
    path = Path(asn_path)
    if not path.is_file():
        raise AssociationError(f"{path}: association file not found")
    try:
        asn = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AssociationError(f"{path}: not a JSON association ({exc})") from None
    if not isinstance(asn, dict):
        raise AssociationError(f"{path}: not an association (expected a JSON object)")
    asn_type = str(asn.get("asn_type", "image3")).lower()
    if asn_type != "image3":
        raise AssociationError(
            f"{path}: asn_type is {asn.get('asn_type')!r}; outlier detection in imaging mode "
            "needs an 'image3' association"
        )
    products = asn.get("products")
    if not isinstance(products, list) or not products:
        raise AssociationError(f"{path}: the association has no products")
    product = products[0]
    if not isinstance(product, dict):
        raise AssociationError(f"{path}: the association's product is not a JSON object")
    name = str(product.get("name") or path.stem.removesuffix("_asn"))
    if not _is_plain_name(name):
        # The product name names the median product: it must not lead out of output_dir.
        raise AssociationError(
            f"{path}: product name {name!r} must be a plain file name (no folders)"
        )
    members = _science_members(path, product.get("members"))
    return name, members


def association_id(asn_path: str | Path) -> str | None:
    """The association's ``asn_id`` (``o001``, ``c1000``), which jwst puts in the names of
    intermediate files; None if it has none or it is not a plain name.

    Call after :func:`read_association` accepted the file.
    """
    asn = json.loads(Path(asn_path).read_text())
    value = asn.get("asn_id")
    return value if isinstance(value, str) and _is_plain_name(value) else None


def _is_plain_name(name: str) -> bool:
    """Whether ``name`` is a file name with no folder part (nothing like ``..`` or ``a/b``)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def _science_members(asn_path: Path, raw: Any) -> list[AssociationMember]:
    if not isinstance(raw, list):
        raise AssociationError(f"{asn_path}: the product has no member list")
    members: list[AssociationMember] = []
    seen: set[Path] = set()
    for k, entry in enumerate(raw):
        if not isinstance(entry, dict) or "expname" not in entry:
            raise AssociationError(f"{asn_path}: member {k} has no 'expname'")
        if not isinstance(entry["expname"], str) or not entry["expname"].strip():
            raise AssociationError(
                f"{asn_path}: member {k} has expname {entry['expname']!r}; expected a file name"
            )
        if str(entry.get("exptype", "science")).lower() != "science":
            continue
        member_path = (asn_path.parent / str(entry["expname"])).resolve()
        if member_path in seen:
            raise AssociationError(f"{asn_path}: member {entry['expname']!r} is listed twice")
        seen.add(member_path)
        if not member_path.is_file():
            raise AssociationError(
                f"{asn_path}: member {entry['expname']!r} not found at {member_path}"
            )
        group = entry.get("group_id")
        members.append(AssociationMember(member_path, None if group is None else str(group)))
    if not members:
        raise AssociationError(f"{asn_path}: the association has no science members")
    return members


def group_id_from_observation(observation: dict[str, Any]) -> str | None:
    """The exposure's group id from its observation keywords, or None if any is missing.

    All detectors of one exposure share it, so they form one grouped mosaic.
    """
    values = [observation.get(key) for key in OBSERVATION_KEYS]
    if any(v is None for v in values):
        return None
    program, obs, visit, visit_group, seq, act, exp = values
    return f"jw{program}{obs}{visit}_{visit_group}{seq}{act}_{exp}"
