"""The documentation: it builds without warnings, and its parameter table matches the code."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from outlier_dask.parameters import (
    PARAMETER_HELP,
    REFERENCE_PARAMETERS,
    OutlierParameters,
    parameter_default_text,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _text_of(page: Path) -> str:
    text = re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8"))
    return re.sub(r"\s+", " ", html.unescape(text))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    out = tmp_path_factory.mktemp("html")
    completed = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, out],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return out


def test_parameter_table_lists_every_parameter_with_its_default(built):
    rows = re.findall(
        r'<tr[^>]*id="parameter-([a-z0-9-]+)"[^>]*>(.*?)</tr>',
        (built / "parameters.html").read_text(encoding="utf-8"),
        flags=re.S,
    )
    table = {name.replace("-", "_"): _cells(row) for name, row in rows}
    names = [f.name for f in fields(OutlierParameters) if f.init]
    assert list(table) == names
    for name in names:
        option, default, meaning, reference = table[name]
        assert option == f"{name} --{name.replace('_', '-')}"
        assert default == parameter_default_text(name)
        assert meaning == PARAMETER_HELP[name]
        assert reference == (name if name in REFERENCE_PARAMETERS else reference)
    assert table["snr"][1] == "5.0 4.0"
    assert table["good_bits"][1] == "~DO_NOT_USE"
    assert table["scheduler"][3] == "—"
    assert table["output_dir"][3] == "output_dir (stpipe)"


def _cells(row: str) -> list[str]:
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
    return [html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", c))).strip() for c in cells]


def test_every_page_is_built_and_the_api_is_documented(built):
    for page in DOCS.glob("*.md"):
        assert (built / f"{page.stem}.html").is_file(), page.name
    api = _text_of(built / "api.html")
    for name in (
        "detect_outliers(",
        "class outlier_dask.OutlierResult",
        "class outlier_dask.parameters.OutlierParameters",
        "nanmedian_stack",
        "flag_resampled_outliers",
        "estimate_resources",
    ):
        assert name in api, name
    # Options keep their two dashes (no typographic dashes in command lines).
    assert "--in-memory=False" in _text_of(built / "memory.html")


def test_pages_are_in_the_toctree_and_markers_are_kept():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^([a-z_]+)$", index, flags=re.M))
    assert {p.stem for p in DOCS.glob("*.md")} - {"index"} <= listed
    performance = (DOCS / "performance.md").read_text(encoding="utf-8")
    starts = re.findall(r"<!-- compare_jwst:(\w+) start -->", performance)
    ends = re.findall(r"<!-- compare_jwst:(\w+) end -->", performance)
    assert starts == ends
