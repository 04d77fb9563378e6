"""Find the real Triton Inference Server that ships in the ``nvidia-pytriton`` wheel, and what it needs to run.

The wheel carries a complete ``tritonserver`` (2.51) binary, its shared libraries
(``nvidia_pytriton.libs``), the Python backend and one Python-backend stub per
Python version. :class:`TritonInstall` says where each piece is and how to run them
directly (no PyTriton ``Triton`` object, no container) against an ordinary model repository.

Launch recipe (found by experiment on a CPU-only Linux machine):

* ``LD_LIBRARY_PATH`` = directory of *this* interpreter's ``libpython3.X.so.1.0``
  (``sysconfig`` ``LIBDIR``) : the wheel's ``nvidia_pytriton.libs`` : the caller's value.
  The libpython entry matters: without it the stub binds to whatever
  ``libpython3.X.so.1.0`` the system loader finds (on Debian that is
  ``/usr/lib/x86_64-linux-gnu``'s 3.11.2), i.e. a different patch release than the
  stdlib and venv it then loads — or fails outright where the system has none.
* ``PATH`` starts with the virtualenv's ``bin``: the embedded interpreter of the stub
  derives ``sys.prefix`` from the ``python3`` it finds on ``PATH``, which is how it
  sees the venv's site-packages (numpy, onnxruntime, ...).
* ``--backend-directory`` = a private directory holding ``python/libtriton_python.so``,
  ``python/triton_python_backend_utils.py`` and ``python/triton_python_backend_stub``
  (the stub matching ``sys.version_info``), copied from the wheel.
* ``--cache-directory`` = the wheel's ``tritonserver/caches`` (the default,
  ``/opt/tritonserver/caches``, does not exist outside the NGC container).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.server_errors import TritonNotFoundError

INSTALL_HINT = 'pip install "nvidia-pytriton>=0.5"  (or: pip install -e ".[serve]")'


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the wheel's Triton server live, plus what the Python backend stub needs."""

    binary: Path
    """``pytriton/tritonserver/bin/tritonserver``."""
    libs_dir: Path
    """Shared libraries the binary links against (``nvidia_pytriton.libs``)."""
    backend_library: Path
    """``libtriton_python.so`` (the Python backend)."""
    backend_utils: Path
    """``triton_python_backend_utils.py``, imported by every ``model.py``."""
    python_stub: Path
    """``triton_python_backend_stub`` built for this interpreter's ``X.Y``."""
    cache_dir: Path | None
    """Response-cache plugins (``caches/local``), or None when the wheel has none."""
    python_bin_dir: Path
    """The running environment's scripts directory (the venv's ``bin``), put first on ``PATH``."""
    python_lib_dir: Path | None
    """Directory holding this interpreter's ``libpython3.X.so.1.0``, or None for a static build."""

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The server's environment: ``base`` (default ``os.environ``) with ``LD_LIBRARY_PATH`` and ``PATH`` set."""
        env = dict(os.environ if base is None else base)
        lib_path = [str(self.libs_dir)]
        if self.python_lib_dir is not None:
            lib_path.insert(0, str(self.python_lib_dir))
        if env.get("LD_LIBRARY_PATH"):
            lib_path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_path)
        env["PATH"] = os.pathsep.join(p for p in (str(self.python_bin_dir), env.get("PATH", "")) if p)
        return env

    def build_backend_dir(self, dest: Path) -> Path:
        """Fill ``dest/python/`` with the backend library, its utils module and this Python's stub; return ``dest``."""
        python_dir = dest / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for src, name in (
            (self.backend_library, "libtriton_python.so"),
            (self.backend_utils, "triton_python_backend_utils.py"),
            (self.python_stub, "triton_python_backend_stub"),
        ):
            # copied beside, then renamed over: a relaunch in the same workdir replaces a stub that a previous
            # launch's process may still be running (writing into it in place fails with "Text file busy")
            partial = python_dir / f".{name}.partial"
            shutil.copy2(src, partial)
            partial.replace(python_dir / name)
        (python_dir / "triton_python_backend_stub").chmod(0o755)
        return dest


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin is not None and spec.origin not in ("namespace", "built-in"):
        return Path(spec.origin).resolve().parent
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]).resolve() if locations else None


def _python_lib_dir() -> Path | None:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not soname:
        return None
    path = Path(str(libdir))
    return path if (path / str(soname)).exists() else None


def find_tritonserver() -> TritonInstall:
    """Locate the ``tritonserver`` binary, its libraries and the Python backend files in the installed wheel.

    Raises:
        TritonNotFoundError: the wheel is missing or lacks a file (the message names it and how to install).
    """
    pkg = _package_dir("pytriton")
    if pkg is None:
        raise TritonNotFoundError(
            "the Triton Inference Server binary comes from the nvidia-pytriton wheel, which is not installed "
            f"in this environment ({sys.executable}). Install it with: {INSTALL_HINT}"
        )
    dist = pkg / "tritonserver"
    libs_candidates = [pkg.parent / "nvidia_pytriton.libs", dist / "external_libs"]  # wheel / editable layout
    libs_dir = next((p for p in libs_candidates if p.is_dir()), libs_candidates[0])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs_root = dist / "python_backend_stubs"
    install = TritonInstall(
        binary=dist / "bin" / "tritonserver",
        libs_dir=libs_dir,
        backend_library=dist / "backends" / "python" / "libtriton_python.so",
        backend_utils=dist / "backends" / "python" / "triton_python_backend_utils.py",
        python_stub=stubs_root / version / "triton_python_backend_stub",
        cache_dir=(dist / "caches") if (dist / "caches").is_dir() else None,
        python_bin_dir=Path(sysconfig.get_path("scripts")),
        python_lib_dir=_python_lib_dir(),
    )
    required = {
        "tritonserver binary": install.binary,
        "server libraries": install.libs_dir,
        "Python backend library": install.backend_library,
        "Python backend utils": install.backend_utils,
        f"Python {version} backend stub": install.python_stub,
    }
    missing = [f"{what}: {path}" for what, path in required.items() if not path.exists()]
    if missing:
        available = sorted(p.name for p in stubs_root.iterdir()) if stubs_root.is_dir() else []
        raise TritonNotFoundError(
            f"the nvidia-pytriton install at {pkg} is incomplete (stubs available for Python {available}); missing:\n  "
            + "\n  ".join(missing)
            + f"\nReinstall it with: {INSTALL_HINT}"
        )
    if not os.access(install.binary, os.X_OK):
        raise TritonNotFoundError(f"{install.binary} is not executable; reinstall with: {INSTALL_HINT}")
    return install
