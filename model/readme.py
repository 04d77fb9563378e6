"""Generated README sections: text between ``<!-- NAME -->`` and ``<!-- /NAME -->`` rewritten from results files.

The figures in those sections come from the results JSON through the code that prints them
(``python -m model.ablations --readme``, ``python -m model.scaling --readme``), never by hand.
"""

from __future__ import annotations

from pathlib import Path


def write_section(readme: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name -->`` and ``<!-- /name -->`` in ``readme`` with ``text``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    body = readme.read_text()
    if body.count(start) != 1 or body.count(end) != 1 or body.index(start) > body.index(end):
        raise ValueError(f"{readme} needs exactly one {start} ... {end} section to rewrite")
    head, rest = body.split(start, 1)
    readme.write_text(f"{head}{start}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}")


def section(readme: Path, name: str) -> str:
    """The text of section ``name`` as :func:`write_section` left it."""
    body = readme.read_text()
    return body.split(f"<!-- {name} -->", 1)[1].split(f"<!-- /{name} -->", 1)[0].strip()
