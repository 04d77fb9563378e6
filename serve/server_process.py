"""A server process in its own process group, its output captured in a log file: spawn, stop, kill, reap.

The process leads a new session, so its process group holds everything it starts (``tritonserver``'s Python
backend stubs): stopping and killing signal the whole group, and a kill returns only once nothing of the
group runs any more. Its stdout and stderr are appended to one log file, after a few header lines; each run
remembers where in the file its own output starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def spawn(
    command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path, header: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``command`` as the leader of a new process group, stdout and stderr appended to ``log_path`` after
    the ``header`` lines; return the process and the log offset where this run's lines start."""
    with log_path.open("ab") as log:
        offset = log.tell()
        for line in header:
            log.write(f"{line}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop()/kill() reach the Python backend stubs too
        )
    return proc, offset


def read_log(log_path: Path | None, offset: int) -> str:
    """What the run whose output starts at ``offset`` wrote to ``log_path`` (empty if there is no file)."""
    if log_path is None or not log_path.exists():
        return ""
    with log_path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


def stop(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM ``proc``'s process group, wait up to ``timeout_s``, then SIGKILL it; return the exit code."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def kill(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGKILL ``proc``'s whole process group; return once nothing of it runs, with the exit code."""
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_group_gone(proc.pid, timeout_s=10)
    return proc.returncode


def reap(proc: subprocess.Popen[bytes], workdir: Path | None) -> None:
    """Last-resort cleanup when a server object is garbage-collected or the interpreter exits while it runs."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pid``; a group already gone (or not ours) is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Zombies do not count: killed stubs are reparented, and
    a container whose PID 1 never reaps (``docker run`` without ``--init``) keeps them forever."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no process of group ``pgid`` runs any more (killed stubs take a moment to exit)."""
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
