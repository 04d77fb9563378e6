"""The arrows between the top-level folders: ``contract`` imports no other folder of the project, and ``serve``
and ``client`` import only ``contract`` (and themselves), so the server's launcher and the client install and run
without torch, the model or the export toolchain.

Two views: every import statement written in those folders (module level or inside a function, read from the
source), and what a fresh interpreter has loaded once it imported their entry points.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("bench", "client", "contract", "export", "model", "serve")
ALLOWED = {"contract": {"contract"}, "serve": {"contract", "serve"}, "client": {"contract", "client"}}


def project_imports(path: Path) -> set[str]:
    """The project folders ``path`` imports from, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(FOLDERS)
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_folder_imports_only_what_it_may(folder: str) -> None:
    wrong = {
        str(path.relative_to(REPO)): sorted(found - ALLOWED[folder])
        for path in sorted((REPO / folder).glob("*.py"))
        if (found := project_imports(path)) - ALLOWED[folder]
    }
    assert not wrong, f"{folder}/ may import only {sorted(ALLOWED[folder])}; these import more: {wrong}"


def test_entry_points_load_neither_torch_nor_model_nor_export() -> None:
    """Importing the launcher and the client (their CLIs included) loads no ``torch``, ``model``, ``export`` or
    ``bench`` module, directly or through a third party."""
    code = (
        "import sys, serve.__main__, serve.response_cache, serve.triton_server, client, client.__main__; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model', 'export', 'bench')); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
