"""asdf's extensions loaded with libyaml-parsed manifests (outlier_dask.io.asdf_extensions)."""

from __future__ import annotations

import json
import subprocess
import sys

import asdf
import pytest
import yaml

_LIST_EXTENSIONS = """
import json, sys
import yaml
calls = []
pure = yaml.safe_load
yaml.safe_load = lambda stream: calls.append(1) or pure(stream)
import asdf
from asdf.extension import _manifest
if sys.argv[1] == "ours":
    from outlier_dask.io.asdf_extensions import load_asdf_extensions
    load_asdf_extensions()
extensions = asdf.get_config().extensions
print(json.dumps({
    "uris": [e.extension_uri for e in extensions],
    "tags": sorted(t.tag_uri for e in extensions for t in e.tags),
    "pure_safe_loads": len(calls),
    "restored": _manifest.yaml is yaml,
}))
"""


def _extensions_in_fresh_process(how: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _LIST_EXTENSIONS, how],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_same_extensions_without_the_pure_python_parser():
    asdf_own = _extensions_in_fresh_process("asdf")
    ours = _extensions_in_fresh_process("ours")
    assert asdf_own["pure_safe_loads"] > 10  # asdf parses each manifest in pure Python
    assert ours["pure_safe_loads"] == 0
    assert ours["restored"]
    assert ours["uris"] == asdf_own["uris"]
    assert ours["tags"] == asdf_own["tags"]


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_every_asdf_resource_parses_the_same_with_libyaml():
    """The manifests and schemas asdf holds: libyaml's safe loader gives the same objects."""
    resources = asdf.get_config().resource_manager
    uris = list(resources)
    assert len(uris) > 100
    for uri in uris:
        text = resources[uri]
        assert yaml.load(text, Loader=yaml.CSafeLoader) == yaml.safe_load(text), uri
