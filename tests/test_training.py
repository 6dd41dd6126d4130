"""Pretraining recipes (``napari-cdinn train cdi``, training/train_*.py): options refused up
front, model files never replaced unasked, diverged or damaged runs refused by name."""

from __future__ import annotations

import argparse

import pytest

from napari_cdinn.core.errors import CdinnError
from napari_cdinn.core.nn import train_options


def parsed(mode: str, *argv: str) -> argparse.Namespace:
    """``argv`` parsed by the recipe of ``mode``; a refused option raises SystemExit."""
    parser = argparse.ArgumentParser()
    train_options.RECIPES[mode](parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("mode", "argv", "message"),
    [
        ("cdi", ["--clip-norm", "-1"], "--clip-norm: -1: must be more than 0"),
        ("cdi", ["--clip-norm", "0"], "--clip-norm: 0: must be more than 0"),
        ("cdi", ["--clip-norm", "nan"], "--clip-norm: nan: must be a finite number"),
        ("cdi", ["--lr", "inf"], "--lr: inf: must be a finite number"),
        ("cdi", ["--lr", "0"], "--lr: 0: must be more than 0"),
        ("cdi", ["--lr", "1e6"], "--lr: 1e6: must be at most 1"),
        ("cdi", ["--minutes", "inf"], "--minutes: inf: must be a finite number"),
        ("cdi", ["--minutes", "1e9"], "--minutes: 1e9: must be at most 10080"),
        ("cdi", ["--size", "8"], "--size: 8: must be at least 16"),
        ("cdi", ["--width", "1"], "--width: 1: must be at least 2"),
        ("ptycho", ["--mixing", "-1"], "--mixing: -1: must be at least 0"),
    ],
)
def test_training_options_that_cannot_work_are_refused_by_argparse(mode, argv, message, capsys):
    """--clip-norm -1 climbed the loss (gradient ascent), --lr inf and --minutes inf trained
    NaN or forever, --size 8 hung in the simulation, --mixing -1 failed after it."""
    with pytest.raises(SystemExit):
        parsed(mode, *argv)
    assert message in capsys.readouterr().err


def test_wide_angle_validation_shots_are_not_carved_out_of_the_training_shots():
    """--n-val shots are simulated apart from --n-shots: 1000 of them beside 500 training
    shots is a valid recipe, and fewer training shots than one batch is not."""
    train_options.check_counts(parsed("wideangle", "--n-shots", "500", "--n-val", "1000"))
    with pytest.raises(CdinnError, match="100 training examples: fewer than one batch of 256"):
        train_options.check_counts(parsed("wideangle", "--n-shots", "100", "--batch", "256"))
