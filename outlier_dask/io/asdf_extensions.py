"""asdf's extensions, loaded with their manifests parsed by libyaml.

The first ASDF tree a process reads makes asdf load the extensions of every installed package
(asdf-astropy, gwcs, stdatamodels, ...). Each extension is described by a YAML manifest, which
asdf parses with ``yaml.safe_load``: PyYAML's pure-Python parser. It reads ASDF files
themselves with PyYAML's binding to libyaml when PyYAML has one. On the benchmark machine
loading the extensions took 0.37 s of the 0.65 s in which a run read its 16 members'
metadata, and 0.18 s with the manifests parsed by libyaml; every one of the 917 documents
asdf's resource manager holds parses to the same Python objects with both parsers
(``tests/io/test_asdf_extensions.py``).

:func:`load_asdf_extensions` has asdf load them once, with its manifest reader's
``yaml.safe_load`` pointed at the libyaml parser for the duration of that load only. Where
PyYAML lacks libyaml, or asdf reads manifests some other way, asdf loads them as it would.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

import asdf
import yaml

__all__ = ["load_asdf_extensions"]


@contextlib.contextmanager
def _manifests_parsed_by_libyaml() -> Iterator[None]:
    """Within the block, asdf parses extension manifests with PyYAML's libyaml loader."""
    try:
        from asdf.extension import _manifest
    except ImportError:  # another asdf layout: leave it as it is
        yield
        return
    if getattr(_manifest, "yaml", None) is not yaml or not getattr(yaml, "__with_libyaml__", 0):
        yield
        return
    # asdf's manifest reader calls only yaml.safe_load; the safe loader's C twin takes its place.
    _manifest.yaml = types.SimpleNamespace(
        safe_load=functools.partial(yaml.load, Loader=yaml.CSafeLoader)
    )
    try:
        yield
    finally:
        _manifest.yaml = yaml


def load_asdf_extensions() -> None:
    """Load asdf's extensions into its global configuration now (once per process).

    Configurations made later by ``asdf.config_context`` copy the loaded list instead of
    loading the extensions again.
    """
    with _manifests_parsed_by_libyaml():
        asdf.get_config().extensions  # noqa: B018 - the property loads them
