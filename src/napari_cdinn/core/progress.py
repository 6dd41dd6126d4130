"""Long work is a generator yielding ``(done, total)`` and returning its result: the GUI runs it in
a napari worker (progress bar, cancel by closing it), scripts and the CLI run it to the end."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")


def run_to_end(steps: Generator[tuple[int, int], None, T]) -> T:
    """Drive a progress generator to completion and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
