"""Command-line options of CDI training, kept free of torch so ``napari-cdinn --help`` is quick."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options, shared by ``napari-cdinn train cdi`` and training/train_cdi.py."""
    parser.add_argument("--n-train", type=int, default=100_000)
    parser.add_argument("--n-val", type=int, default=2_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--minutes", type=float, default=80.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=Path("cdi_training"), help="cache + checkpoint"
    )
    parser.add_argument("--out", type=Path, help="folder for weights + card (default: user models)")
    parser.add_argument("--name", default="cdi_nn")
    parser.add_argument("--log", type=Path, help="log file (default: WORKDIR/train_cdi.log)")
    parser.add_argument("--threads", type=int, default=2)
