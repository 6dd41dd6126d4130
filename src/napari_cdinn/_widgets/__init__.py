"""napari dock widgets: layer plumbing, threads and calls into ``core`` only."""

from napari.utils.notifications import show_error

from ..core.errors import CdinnError


def report_error(err: Exception) -> None:
    """A worker's error as a notification: our own errors as their one-line message."""
    show_error(str(err) if isinstance(err, CdinnError) else f"{type(err).__name__}: {err}")


def advance(bar, step: tuple[int, int]) -> None:
    """Move a napari progress bar to a core generator's ``(done, total)``."""
    done, total = step
    bar.total = total
    bar.update(done - bar.n)
