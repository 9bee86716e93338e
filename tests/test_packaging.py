"""The package as pip installs it: a wheel built from the checkout holds every module and imports outside it."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_every_module_outside_the_checkout(tmp_path):
    wheels, site, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    # build from a clean copy: setuptools would reuse a stale build/ folder of the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "shards", "runs",
                                                             "__pycache__", ".gpuwheels"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("amd_fast-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    expected = sorted({".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "amd_fast").rglob("*.py")}
                      | {"amd_fast.kernels." + p.stem for p in (REPO / "kernels").glob("*.py")})
    expected = [m[: -len(".__init__")] if m.endswith(".__init__") else m for m in expected]
    script = textwrap.dedent(f"""
        import importlib, os, sys
        site = {str(site)!r}
        bad = []
        for name in {expected!r}:
            mod = importlib.import_module(name)
            if not os.path.realpath(mod.__file__).startswith(os.path.realpath(site)):
                bad.append((name, mod.__file__))
        print("imported", len({expected!r}), "modules; from elsewhere:", bad)
        sys.exit(1 if bad else 0)
    """)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "amd_fast.trainer.loop" in expected and "amd_fast.kernels.masked_gather" in expected
