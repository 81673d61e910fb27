"""The install puts each command on the PATH (pyproject's [project.scripts]), each the same main as
the script form `python <folder>/<name>.py` runs, and no file reaches the project by sys.path."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_command_is_its_scripts_main(name):
    module, _, function = SCRIPTS[name].partition(":")
    assert (ROOT / f"{module.replace('.', '/')}.py").is_file() and function == "main"
    assert callable(getattr(importlib.import_module(module), function))


def test_an_installed_command_runs_from_any_folder(tmp_path):
    done = subprocess.run([str(Path(sys.executable).parent / "cost-train"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: cost-train"), done.stderr


def test_no_file_puts_the_project_on_sys_path():
    files = [p for folder in ("pipeline", "train", "results", "cluster", "bench", "tests") for p in
             (ROOT / folder).rglob("*.py") if p != Path(__file__)]
    assert [str(p.relative_to(ROOT)) for p in files if "sys.path.insert" in p.read_text()] == []
