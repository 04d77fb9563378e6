"""What a command-line tool calls itself in its usage line and errors.

Each tool runs two ways: as its console script (``astro-client``, installed by ``pip``) and as a module
(``python -m client``). argparse names a program after ``sys.argv[0]``, which for a module is its file
(``usage: train.py``, ``usage: __main__.py``): neither a command anyone can type.
"""

from __future__ import annotations

import os
import sys

SCRIPT_PREFIX = "astro-"  # every console script of [project.scripts] in pyproject.toml


def program_name(module: str) -> str:
    """``astro-<tool>`` when run as that console script, else ``python -m <module>``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith(SCRIPT_PREFIX) else f"python -m {module}"
