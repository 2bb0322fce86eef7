"""The package as a user gets it: the built wheel installs into a fresh virtual environment and its commands run.

A fresh environment cannot download torch here (a multi-GB CUDA build, or no network at all), so the new venv sees
the dependencies of the project's environment through a `.pth` path line (that directory joins `sys.path` after the
venv's own site-packages, and its own `.pth` files, among them the editable install of salt_hf, are not run). The
wheel is installed with `--no-deps --no-index`: salt_hf itself comes from the wheel only, as the test checks.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_license_and_citation():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] and citation["license"] == "Apache-2.0"
    paper = citation["preferred-citation"]
    assert paper["title"].startswith("A Little Help Goes a Long Way") and "2410.18779" in paper["url"]
    assert paper["authors"][0]["family-names"] == "Rawat"


def test_wheel_installs_into_a_fresh_venv(tmp_path):
    # --no-isolation: the build backend of the project's environment (setuptools, wheel), no download
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT))
    (wheel,) = (tmp_path / "dist").glob("salt_hf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # the evaluate modules load by path from the installed package: their scripts must be in the wheel
    assert any(name.endswith("metrics/next_token_accuracy/next_token_accuracy.py") for name in names)
    assert any(name.endswith("licenses/LICENSE") for name in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = venv / "bin" / "python"
    venv_site = run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    Path(venv_site, "project_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel))

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    where = run(str(python), "-c", "import salt_hf; print(salt_hf.__file__)", cwd=tmp_path, env=env).stdout
    assert Path(where.strip()).is_relative_to(venv), where
    usage = run(str(venv / "bin" / "salt-train"), "--help", cwd=tmp_path, env=env).stdout
    assert usage.startswith("usage: salt-train") and "--kd_weight" in usage
