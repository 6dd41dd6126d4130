"""The napari face from outside: ``napari-cdinn view`` in a subprocess, and the manifest.

Each test's ``command(workdir)`` gives the (argv, env) of its subprocess, or a reason it cannot
run here.  conftest.py starts these commands when collection ends, so they run beside the viewer
tests, and the ``command_run`` fixture hands each test its finished process.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_cdinn._sample_data import sample_path

pytestmark = pytest.mark.napari

Launch = tuple[list[str], dict[str, str]] | str


def command(launch: Callable[[Path], Launch], timeout: float = 180):
    """Attach the subprocess ``launch(workdir)`` to a test (see conftest.py)."""
    launch.timeout = timeout

    def attach(test):
        test.command = launch
        return test

    return attach


def script(name: str) -> str:
    """The console script installed beside this Python (or on PATH)."""
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def environment(workdir: Path, **changes: str | None) -> dict[str, str]:
    """This environment with napari's settings in ``workdir``, and ``changes`` (None: remove)."""
    env = dict(os.environ, NAPARI_CONFIG=str(workdir / "napari_settings.yaml"))
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def view_with_screenshot(workdir: Path) -> Launch:
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        return "needs an X display: run under `xvfb-run -a python -m pytest`"
    argv = [script("napari-cdinn"), "view", str(sample_path("cdi_crystals.cxi"))]
    return [*argv, "--screenshot", str(workdir / "window.png")], environment(workdir)


def view_without_display(workdir: Path) -> Launch:
    if not sys.platform.startswith("linux"):
        return "the display check applies on Linux only"
    return [script("napari-cdinn"), "view"], environment(
        workdir, DISPLAY=None, WAYLAND_DISPLAY=None
    )


def validate_manifest(workdir: Path) -> Launch:
    return [script("npe2"), "validate", "--imports", "napari-cdinn"], environment(workdir)


@command(view_with_screenshot)
def test_view_screenshot_writes_a_png(command_run):
    shot = command_run.workdir / "window.png"

    assert command_run.returncode == 0, command_run.stderr[-3000:]
    assert shot.is_file() and shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = iio.imread(shot)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert np.ptp(pixels[..., :3]) > 0  # a window, not a blank image


@command(view_without_display, timeout=120)
def test_view_without_display_is_one_line_error(command_run):
    assert command_run.returncode not in (0, None)
    lines = command_run.stderr.strip().splitlines()
    assert len(lines) == 1, command_run.stderr
    assert lines[0].startswith("napari-cdinn: error:")
    assert "xvfb-run" in lines[0]
    assert command_run.stdout == ""


@command(validate_manifest)
def test_manifest_validates_with_imports(command_run):
    assert command_run.returncode == 0, command_run.stdout + command_run.stderr
    assert "valid" in command_run.stdout
