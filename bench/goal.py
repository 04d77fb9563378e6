"""One benchmark goal checked against one run: the rows of every section's goals table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    scope: str  # the configuration or variant the goal is checked on ("" where there is one)
    goal: str
    met: bool
    measured: str  # the figures, and where missed, the measured cause
