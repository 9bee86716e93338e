"""One-command set-up for a fresh machine that has only ``python3``.

    python3 -m amd_fast.bootstrap demo    # venv + install + the end-to-end demo
    python3 -m amd_fast.bootstrap test    # venv + install + the test suite

Standard library only: it runs before anything is installed. It makes a virtual
environment in ``.venv/`` inside the checkout, installs the package (editable) with
its test and bench extras, and re-runs the requested job with that environment's
python. The install is skipped when ``setup.py`` has not changed since the last one.
Extra arguments after the job name are passed through (to pytest, or to the demo).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

from amd_fast.errors import InputError, RunFailed, run_cli  # standard library only, like this file

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".amd_fast-installed"

JOBS = {
    "demo": ["-m", "amd_fast.demo"],
    "test": ["-m", "pytest", "-q", "-ra", "tests"],
}


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _install_key() -> str:
    return hashlib.sha256((ROOT / "setup.py").read_bytes()).hexdigest()


def ensure_environment() -> Path:
    py = _venv_python()
    if not py.exists():
        print(f"[bootstrap] creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    if STAMP.exists() and STAMP.read_text().strip() == _install_key():
        return py
    print("[bootstrap] installing amd_fast and its dependencies (first run downloads torch: a few GB)", flush=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test,bench]"],
        check=True,
        cwd=ROOT,
    )
    STAMP.write_text(_install_key())
    return py


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def bootstrap() -> int:
        if not argv or argv[0] not in JOBS:
            raise InputError(f"usage: python3 -m amd_fast.bootstrap {{{'|'.join(JOBS)}}} [extra args]")
        job, extra = argv[0], argv[1:]
        try:
            py = ensure_environment()
        except subprocess.CalledProcessError as err:
            raise RunFailed(f"set-up failed ({err}); fix the error above and run the same command again") from None
        return subprocess.run([str(py), *JOBS[job], *extra], cwd=ROOT).returncode  # the job's own exit code

    return run_cli(bootstrap, "amd_fast.bootstrap", "rerun the same command: set-up resumes")


if __name__ == "__main__":
    sys.exit(main())
