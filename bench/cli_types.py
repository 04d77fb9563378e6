"""argparse value types shared by the benchmark CLIs."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; every value a positive integer."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values
