"""Importing the package never exits the interpreter; each entry point names what is missing in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]


def test_package_import_needs_nothing():
    # -S hides site-packages: the package itself imports with the standard library alone
    r = subprocess.run([sys.executable, "-S", "-c", "import sim4seg, sim4seg.deps; print(sim4seg.__version__)"],
                       capture_output=True, text=True, env=child_env(PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


@pytest.mark.parametrize("args", [["-m", "sim4seg.eval"], ["-m", "sim4seg.cli", "data", "stats", "--data", "x"],
                                  ["-m", "sim4seg.reproduce", "table2", "--smoke"]])
def test_entry_point_names_missing_packages(tmp_path, args):
    r = subprocess.run([sys.executable, "-S", *args], cwd=tmp_path, capture_output=True, text=True,
                       env=child_env(PYTHONPATH=str(ROOT)))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: missing package(s) torch") and len(r.stderr.strip().splitlines()) == 1



def test_app_names_gradio(monkeypatch, capsys):
    from sim4seg import cli, deps

    monkeypatch.setattr(deps, "APP", {**deps.APP, "gradio_not_installed_here": "gradio"})
    with pytest.raises(SystemExit) as e:
        cli.main(["app"])
    assert e.value.code == 2 and "missing package(s) gradio for sim4seg app" in capsys.readouterr().err
