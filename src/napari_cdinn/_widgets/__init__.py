"""napari dock widgets: layer plumbing, threads and calls into ``core`` only."""

from napari.utils.notifications import show_error

from ..core.errors import CdinnError


def report_error(err: Exception) -> None:
    """A worker's error as a notification: our own errors as their one-line message."""
    show_error(str(err) if isinstance(err, CdinnError) else f"{type(err).__name__}: {err}")
