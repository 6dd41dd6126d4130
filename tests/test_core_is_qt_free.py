"""``napari_cdinn.core`` stays free of napari and Qt: checked statically and by importing it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt")


def test_import_linter_contracts_pass():
    pytest.importorskip(
        "importlinter", reason="import-linter is not installed (pip install .[test])"
    )
    script = Path(sys.executable).parent / "lint-imports"
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    run = subprocess.run(
        [*command, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "core is Qt-free and napari-free KEPT" in output
    assert "0 broken" in output


def test_importing_every_core_module_pulls_in_no_gui():
    code = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        import napari_cdinn.core as core
        names = [m.name for m in pkgutil.walk_packages(core.__path__, core.__name__ + ".")]
        for name in names:
            importlib.import_module(name)
        forbidden = {FORBIDDEN!r}
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
        print(json.dumps({{"modules": names, "leaked": leaked}}))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert "napari_cdinn.core.io.hdf5" in report["modules"]  # the walk did find the modules
    assert "napari_cdinn.core.data" in report["modules"]
    assert report["leaked"] == [], f"core imported GUI modules: {report['leaked']}"
