"""Pieces both training scripts share: a log that survives restarts, the learning-rate schedule,
and the checkpoint that lets an interrupted run resume."""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

import torch


class Log:
    """Print a timestamped line and append it to a file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")


def cosine_lr(base: float, fraction: float) -> float:
    """Cosine decay from ``base`` to 2 % of it over the time budget (``fraction`` 0 -> 1)."""
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"


def resume(checkpoint: Path, model, optimizer, log: Log) -> dict:
    """Training state from ``checkpoint`` if it exists (weights only: no code runs)."""
    state = {"epoch": 0, "elapsed_s": 0.0, "history": []}
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {k: saved[k] for k in state}
        log(f"resumed from epoch {state['epoch']} ({state['elapsed_s'] / 60:.1f} min trained)")
    return state


def save_checkpoint(checkpoint: Path, model, optimizer, state: dict) -> None:
    """Write atomically, so a run killed mid-write still resumes from the previous epoch."""
    tmp = checkpoint.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state}, tmp)
    tmp.replace(checkpoint)
