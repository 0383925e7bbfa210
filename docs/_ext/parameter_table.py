"""Sphinx directive ``parameter-table``: every parameter of a run, made from the code.

The rows come from :mod:`outlier_dask.parameters`, where each parameter is defined once: the
fields of ``OutlierParameters`` (names, defaults), ``PARAMETER_HELP`` (meaning and unit, the text
of ``outlier-dask run --help`` and of the step's spec) and ``REFERENCE_PARAMETERS`` (which names
the reference step shares), so the table cannot drift from the code. In a MyST page::

    ```{parameter-table}
    ```
"""

from __future__ import annotations

from dataclasses import fields

from docutils import nodes
from docutils.parsers.rst import Directive

#: Parameters that ``stpipe`` gives every step, the reference's included.
STPIPE_COMMON = {"output_dir", "suffix"}


def parameter_rows() -> list[tuple[str, str, str, str]]:
    """``(name, default, meaning, reference name)`` of every parameter, in dataclass order."""
    from outlier_dask.parameters import (
        PARAMETER_HELP,
        REFERENCE_PARAMETERS,
        OutlierParameters,
        parameter_default_text,
    )

    rows = []
    for f in fields(OutlierParameters):
        if not f.init:
            continue
        if f.name in REFERENCE_PARAMETERS:
            reference = f.name
        elif f.name in STPIPE_COMMON:
            reference = f"{f.name} (stpipe)"
        else:
            reference = "—"
        rows.append((f.name, parameter_default_text(f.name), PARAMETER_HELP[f.name], reference))
    return rows


def _literal_cell(text: str) -> nodes.entry:
    return nodes.entry("", nodes.paragraph("", "", nodes.literal(text, text)))


def _text_cell(text: str) -> nodes.entry:
    return nodes.entry("", nodes.paragraph(text, text))


class ParameterTable(Directive):
    """Insert the parameter table."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        header = ("parameter (option)", "default", "meaning", "reference step's name")
        widths = (22, 14, 48, 16)
        table = nodes.table(classes=["parameter-table"])
        group = nodes.tgroup(cols=len(header))
        table += group
        for width in widths:
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        row = nodes.row()
        for title in header:
            row += _text_cell(title)
        head += row
        group += head
        body = nodes.tbody()
        for name, default, meaning, reference in parameter_rows():
            row = nodes.row(ids=[f"parameter-{name.replace('_', '-')}"])
            option = "--" + name.replace("_", "-")
            name_cell = nodes.entry(
                "",
                nodes.paragraph("", "", nodes.literal(name, name)),
                nodes.paragraph("", "", nodes.literal(option, option)),
            )
            row += name_cell
            row += _literal_cell(default)
            row += _text_cell(meaning)
            row += _literal_cell(reference) if reference != "—" else _text_cell(reference)
            body += row
        group += body
        return [table]


def setup(app):  # noqa: ANN001, ANN201 - Sphinx's extension entry point
    """Register the directive."""
    app.add_directive("parameter-table", ParameterTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
