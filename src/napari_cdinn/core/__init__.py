"""The Qt-free heart of napari-cdinn: data objects, readers/writers, physics, networks.

Nothing here imports napari or Qt (an import-linter contract in pyproject.toml enforces it), so the
command-line tool, scripts and notebooks use exactly the same code as the GUI.
"""
