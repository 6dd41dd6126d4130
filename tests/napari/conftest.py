"""Fixtures for the viewer tests: display check, isolated napari settings, notifications, real data.

These tests need a real display (Qt's offscreen platform cannot add layers); run them with
``xvfb-run -a python -m pytest tests/napari``.  Without one, every test that needs a viewer is
skipped with that reason instead of letting Qt abort the whole pytest process.

napari's own pytest plugin (``napari.utils._testsupport``, which provides ``make_napari_viewer``)
is registered through its ``pytest11`` entry point, so nothing has to enable it here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# The real experimental data (see ../shared/data/README.md); read in place, never copied.
HAVE_DISPLAY = not sys.platform.startswith("linux") or bool(
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
)
NO_DISPLAY = "needs a display for a napari viewer: run under `xvfb-run -a python -m pytest`"
_QT_FIXTURES = {"make_napari_viewer", "qtbot", "viewer", "dock"}


def pytest_collection_modifyitems(config, items):
    """Skip this folder's Qt tests without a display; run its command tests last.

    A test whose function has a ``command`` attribute (see test_commands.py) runs a slow
    subprocess; that subprocess is started as soon as collection ends and runs beside the viewer
    tests, so putting its test last means its result is usually waiting for it.
    """
    ours = [item for item in items if HERE in Path(str(item.path)).parents]
    if not HAVE_DISPLAY:
        skip = pytest.mark.skip(reason=NO_DISPLAY)
        for item in ours:
            if _QT_FIXTURES & set(item.fixturenames):
                item.add_marker(skip)
    last = [item for item in ours if hasattr(getattr(item, "function", None), "command")]
    if last:
        items[:] = [item for item in items if item not in last] + last


# -- commands run in the background -----------------------------------------------------------
_RUNS = pytest.StashKey[dict]()


@dataclass
class CommandRun:
    """A subprocess started for one test: its arguments, working folder and output files."""

    argv: list[str]
    workdir: Path
    process: subprocess.Popen
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""


def _start(item, root: Path) -> CommandRun | str:
    """Start ``item.function.command(workdir)``'s (argv, env); a string it returns is why not."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{item.name[:40]}-", dir=root))
    launch = item.function.command(workdir)
    if isinstance(launch, str):
        return launch
    argv, env = launch
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=err,
            cwd=workdir,
            # in the background, second to the viewer tests (POSIX only)
            preexec_fn=(lambda: os.nice(5)) if hasattr(os, "nice") else None,
        )
    return CommandRun(list(argv), workdir, process)


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    root = Path(tempfile.mkdtemp(prefix="napari-cdinn-commands-"))
    runs = {"root": root}
    for item in session.items:
        if hasattr(getattr(item, "function", None), "command") and not item.get_closest_marker(
            "skip"
        ):
            runs[item.nodeid] = _start(item, root)
    session.config.stash[_RUNS] = runs


def pytest_sessionfinish(session):
    runs = session.config.stash.get(_RUNS, {})
    for run in runs.values():
        if isinstance(run, CommandRun) and run.process.poll() is None:
            run.process.kill()  # only what this conftest started
            run.process.wait()
    if "root" in runs:
        shutil.rmtree(runs["root"], ignore_errors=True)


@pytest.fixture
def command_run(request) -> CommandRun:
    """The finished subprocess of this test's ``command`` (started in the background if it could
    be; otherwise now), waited for at most ``command.timeout`` seconds."""
    runs = request.config.stash.get(_RUNS, {})
    run = runs.get(request.node.nodeid)
    if run is None:  # not started at collection (e.g. pytest --lf): start it now
        root = Path(tempfile.mkdtemp(prefix="napari-cdinn-commands-"))
        request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
        run = _start(request.node, root)
    if isinstance(run, str):
        pytest.skip(run)
    timeout = getattr(request.function.command, "timeout", 180)
    try:
        run.returncode = run.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.process.kill()
        run.process.wait()
        pytest.fail(f"{' '.join(run.argv)} ran longer than {timeout} s")
    run.stdout = (run.workdir / "stdout.txt").read_text(errors="replace")
    run.stderr = (run.workdir / "stderr.txt").read_text(errors="replace")
    return run


@pytest.fixture
def real_data(real_path):
    """``real_data("cxi/x.cxi")``: a path in the shared real-data folder, skipping when absent."""
    return real_path


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path_factory):
    """napari's and the plugin's settings live in memory or in a temporary folder, never the user's.

    ``make_napari_viewer`` resets napari's settings and the device combo writes the plugin's
    setting; neither must touch the real configuration directory of whoever runs the tests.
    The plugin's settings file goes to a fresh temporary folder of its own.
    """
    from napari import settings as napari_settings

    fresh = napari_settings.NapariSettings(config_path=None)
    fresh._connect_events()
    monkeypatch.setattr(napari_settings, "_SETTINGS", fresh)
    config = tmp_path_factory.mktemp("napari-config")
    monkeypatch.setattr(napari_settings, "_CFG_PATH", str(config / "settings.yaml"))
    napari_settings._clear_plugin_settings_cache()
    yield
    napari_settings._clear_plugin_settings_cache()


@pytest.fixture
def viewer(make_napari_viewer):
    """A hidden napari viewer, closed and checked for leaks by napari's fixture."""
    return make_napari_viewer()


@pytest.fixture
def dock(viewer):
    """The plugin's "Diffraction data" dock widget in ``viewer``."""
    from napari_cdinn._widgets.data_dock import DataDock

    _, widget = viewer.window.add_plugin_dock_widget("napari-cdinn", "Diffraction data")
    assert isinstance(widget, DataDock)
    return widget


@pytest.fixture
def notifications():
    """``notifications()``: the napari notifications dispatched since the test began."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    yield lambda: list(notification_manager.records[start:])
    del notification_manager.records[start:]


@pytest.fixture
def error_messages(notifications):
    """``error_messages()``: the messages of the error notifications since the test began."""
    from napari.utils.notifications import NotificationSeverity

    return lambda: [
        str(n.message) for n in notifications() if n.severity == NotificationSeverity.ERROR
    ]
