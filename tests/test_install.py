"""The package as users install it: the client on every current Python, the console scripts from a fresh install.

* Client-only environments on Python 3.10, 3.12 and 3.13 (pyenv's, skipped with the reason where one is
  missing): ``pip install '.[client]'`` of this checkout, then ``astro-client score`` against the real
  server started from the main environment, whose scores must equal the main environment's client's. The
  environments hold the dependencies only and are cached per Python and ``pyproject.toml`` under
  ``$ASTRO_INSTALL_CACHE`` (default ``~/.cache/astro-serving/install``), so a warm run reinstalls the
  project alone; the project is installed from a copy of its sources, never from the last run's.
* Every console script of ``[project.scripts]`` answers ``--help`` under its own name from a fresh
  Python 3.11 environment (the project installed into it; torch and the other heavy dependencies read from
  the main environment rather than downloaded again).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import tomllib

from client.__main__ import main as client_main
from serve.triton_server import TritonServer

pytestmark = pytest.mark.install

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])
CLIENT_PYTHONS = ("3.10", "3.12", "3.13")
CACHE = Path(os.environ.get("ASTRO_INSTALL_CACHE") or Path.home() / ".cache" / "astro-serving" / "install")
PIP_TIMEOUT_S = 600  # a cold pip cache downloads grpcio, numpy and pydantic-core wheels

LAST_CANDIDATE = 1012
REQUEST = {
    "history": {
        "item_ids": [11, 12, 13, 14],
        "behaviors": [0, 1, 0, 2],
        "scenarios": [0, 0, 2, 1],
        "timestamps": [1699990000, 1699995000, 1699999000, 1699999500],
    },
    "candidates": [12, 99, 4242, *range(1000, LAST_CANDIDATE + 1)],
    "scenario": 0,
    "timestamp": 1700000000,
}


def run(cmd: list[str | Path], timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def source_copy(dest: Path) -> Path:
    """What ``pip install .`` reads, copied, so building never writes ``build/`` into the checkout."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for package in ("contract", "model", "export", "serve", "client", "bench"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def pyproject_key() -> str:
    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]


def interpreter(version: str) -> Path:
    """pyenv's ``python<version>`` (newest patch release), else one on PATH; a skip with the reason when none runs."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    installed = sorted(
        pyenv.glob(f"{version}.*/bin/python{version}"),
        key=lambda p: [int(x) for x in p.parts[-3].split(".")[:3] if x.isdigit()],
    )
    on_path = shutil.which(f"python{version}")
    candidates = [*reversed(installed), *([Path(on_path)] if on_path else [])]
    for found in candidates:
        probe = subprocess.run(
            [found, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and probe.stdout.startswith(version):
            return found
    pytest.skip(f"no Python {version} here (`pyenv install {version}`); its client install is not tested on this host")


def cached_venv(python: Path, name: str, setup: Callable[[Path], None]) -> Path:
    """A virtualenv made once per interpreter and pyproject.toml, ``setup`` run on it, then reused."""
    venv = CACHE / f"{name}-{pyproject_key()}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run building the same one: wait for it
        if not (venv / ".ready").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            run([python, "-m", "venv", venv], timeout=180)
            setup(venv)
            (venv / ".ready").touch()
    return venv


@pytest.mark.server
@pytest.mark.parametrize("version", CLIENT_PYTHONS)
def test_client_only_install_scores_against_the_real_server(
    version: str, triton: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    python = interpreter(version)

    def dependencies(venv: Path) -> None:
        # the client extra's dependencies, resolved by pip for this Python; setuptools builds the project later
        run(
            [venv / "bin" / "pip", "install", "--quiet", "setuptools>=68", f"{source_copy(tmp_path / 'deps')}[client]"],
            timeout=PIP_TIMEOUT_S,
        )

    venv = cached_venv(python, f"client-py{version}", dependencies)
    src = source_copy(tmp_path / "src")
    # the project itself, fresh each run; pip checks the extra's dependencies against this Python again
    env = without_checkout(os.environ)  # the installed copy runs, not this checkout
    run([venv / "bin" / "pip", "install", "--quiet", "--no-build-isolation", f"{src}[client]"], timeout=PIP_TIMEOUT_S)

    have = run(
        [venv / "bin" / "python", "-c", "import sys, numpy; print(sys.version_info[:2], numpy.__version__)"], env=env
    )
    assert have.stdout.startswith(f"({version.replace('.', ', ')})"), have.stdout
    no_torch = subprocess.run(
        [venv / "bin" / "python", "-c", "import torch"], capture_output=True, check=False, env=env
    )
    assert no_torch.returncode != 0, (
        "a client-only environment has torch: the test would not prove the client needs none"
    )

    request = tmp_path / "request.json"
    request.write_text(json.dumps(REQUEST))
    scored = run([venv / "bin" / "astro-client", "score", "--url", triton.grpc_url, request], timeout=60, env=env)
    helped = run([venv / "bin" / "astro-client", "--help"], env=env)
    assert helped.stdout.startswith("usage: astro-client "), helped.stdout[:200]
    got = json.loads(scored.stdout)

    assert client_main(["score", "--url", triton.grpc_url, str(request)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert str(LAST_CANDIDATE) in scored.stdout, scored.stdout[:300]
    assert got == want  # one server, one request: the same scores to the last digit, numpy 1 or 2


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new Python 3.11 virtualenv with this checkout installed into it (its console scripts included);
    the dependencies come from the main environment's site-packages through a .pth line."""
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    main_site = Path(sysconfig.get_paths()["purelib"])
    (purelib / "main-environment.pth").write_text(f"{main_site}\n")
    src = source_copy(root / "src")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            src,
        ],
        timeout=300,
    )
    return venv


def without_checkout(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment with this checkout taken off PYTHONPATH, so the installed copy is what runs."""
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    return {
        **{k: v for k, v in environ.items() if k != "PYTHONPATH"},
        **({"PYTHONPATH": os.pathsep.join(paths)} if paths else {}),
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_help_from_a_fresh_install(script: str, fresh_install: Path, tmp_path: Path) -> None:
    exe = fresh_install / "bin" / script
    assert exe.is_file(), f"{script} not installed by `pip install .` ([project.scripts] in pyproject.toml)"
    done = run([exe, "--help"], timeout=120, env=without_checkout(os.environ), cwd=tmp_path)
    assert done.stdout.startswith(f"usage: {script} "), done.stdout[:200]


def test_the_fresh_install_runs_its_own_copy(fresh_install: Path, tmp_path: Path) -> None:
    """What the scripts above ran is the installed copy, not this checkout (nor the main environment's)."""
    modules = sorted({target.split(":")[0] for target in PYPROJECT["project"]["scripts"].values()})
    code = f"import importlib; print(' '.join(importlib.import_module(m).__file__ for m in {modules!r}))"
    done = run([fresh_install / "bin" / "python", "-c", code], env=without_checkout(os.environ), cwd=tmp_path)
    files = done.stdout.split()
    assert len(files) == len(modules) and all(f.startswith(str(fresh_install)) for f in files), files


def test_make_help_lists_every_target() -> None:
    """`make` alone prints the targets and their `##` comments; it bootstraps nothing."""
    makefile = (REPO / "Makefile").read_text()
    phony = next(line for line in makefile.splitlines() if line.startswith(".PHONY:")).split()[1:]
    done = run(["make", "--no-print-directory", "-C", REPO], timeout=30)
    listed = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith("  make ")}
    assert sorted(listed) == sorted(phony), done.stdout
    assert all(len(line.split(maxsplit=2)) == 3 for line in listed.values()), "a target without its ## comment"
