"""Stopping a process a test started, whatever state it is in."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM first (a CLI under test then stops its own tritonserver), SIGKILL after 45 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
