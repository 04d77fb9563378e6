"""JSON lines of requests: one request object per line, in the client's format, as ``client score`` and
``make parity --requests`` read them.

    {"history": {"item_ids": [11, 12], "behaviors": [0, 1], "scenarios": [0, 0], "timestamps": [...]}, ...}
    {"history": {"item_ids": [], "behaviors": [], "scenarios": [], "timestamps": []}, ...}

Blank lines are skipped; an error names the source and the line (``reqs.jsonl:3``).
"""

from __future__ import annotations

import json
from typing import Any

from client.validation import RequestError, ScoreRequest, request_from_json


def is_json_lines(text: str) -> bool:
    """Whether ``text`` holds several JSON documents, one per line, rather than one document (which may span
    lines: a pretty-printed object or list)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return e.msg == "Extra data"
    return False


def read_request_lines(text: str, source: str) -> list[tuple[str, ScoreRequest]]:
    """``(where, request)`` for each non-empty line of ``text``; ``where`` is ``<source>:<line>``."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise RequestError(where, f"is not one JSON request per line: {e}") from e
        out.append((where, request_from_json(obj, where)))
    return out
