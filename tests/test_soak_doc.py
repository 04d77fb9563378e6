"""docs/reliability.md's soak table is the figures tests/test_soak.py recorded (bench.soak_doc), not typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

from bench import soak_doc


def test_the_committed_table_is_the_committed_figures() -> None:
    assert soak_doc.main(["--check"]) == 0


def test_the_table_follows_new_figures(tmp_path: Path) -> None:
    figures = json.loads(soak_doc.FIGURES.read_text())
    doc = tmp_path / "reliability.md"
    doc.write_text(soak_doc.DOC.read_text())
    moved = tmp_path / "soak.json"
    moved.write_text(json.dumps({**figures, "requests": figures["requests"] + 1, "mismatches": 3}))
    assert soak_doc.main(["--figures", str(moved), "--doc", str(doc), "--check"]) == 1
    assert soak_doc.main(["--figures", str(moved), "--doc", str(doc)]) == 0
    assert f"| {figures['requests'] + 1} |" in doc.read_text() and "| 3 (every answer vs PyTorch" in doc.read_text()
    assert soak_doc.main(["--figures", str(moved), "--doc", str(doc), "--check"]) == 0
