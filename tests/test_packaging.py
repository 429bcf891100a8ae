"""Packaging: a regular (non-editable) install ships `kernels/` as `r1jax.kernels`, and the console script works."""

import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_kernels_as_r1jax_kernels(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", REPO, "-w", str(wheel_dir)],
        check=True, cwd=tmp_path, capture_output=True,
    )
    (wheel,) = list(wheel_dir.glob("r1jax-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "r1jax/kernels/__init__.py" in names and "r1jax/kernels/grouped_logprob/api.py" in names
    assert not any(n.startswith("kernels/") for n in names)  # no top-level `kernels` package (PyPI clash)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )
    code = "import r1jax, r1jax.kernels as k; print(r1jax.__file__); print(k.grouped_logprob.__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    ).stdout.split()
    assert out[0].startswith(str(target))  # the installed copy, not the source tree
    assert out[1] == "r1jax.kernels.grouped_logprob.api"


def test_console_script_help():
    script = os.path.join(os.path.dirname(sys.executable), "r1jax")
    out = subprocess.run([script, "--help"], check=True, capture_output=True, text=True).stdout
    for command in ("train", "eval", "demo", "pipeline"):
        assert command in out
