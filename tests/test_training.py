"""Pretraining recipes (``napari-cdinn train cdi``, training/train_*.py): options refused up
front, model files never replaced unasked, diverged or damaged runs refused by name."""

from __future__ import annotations

import argparse
import json
import re

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


CARD = {"name": "m", "version": "1", "mode": "cdi", "architecture": "CDINet", "arguments": {}}


@pytest.mark.parametrize(
    ("architecture", "arguments", "message"),
    [
        ("CDINet", {"size": 4}, "'size' is 4: CDINet takes multiples of 8 from 16"),
        ("CDINet", {"size": 60}, "'size' is 60: CDINet takes multiples of 8 from 16"),
        ("CDINet", {"width": 1}, "'width' is 1, not a whole number >= 2"),
        ("PtychoNet", {"size": 8, "patch": 4}, "'size' is 8: PtychoNet takes multiples of 8"),
        ("WideAngleNet", {"size": 48}, "'size' is 48: WideAngleNet takes multiples of 32"),
        ("WideAngleNet", {"equalise": "no"}, "'equalise' is 'no', not true or false"),
    ],
)
def test_cards_with_arguments_the_network_cannot_take_are_refused(
    tmp_path, architecture, arguments, message
):
    """A card saying size 4 loaded and crashed in invert; "equalise": "no" was taken as true."""
    from napari_cdinn.core.errors import InputError
    from napari_cdinn.core.nn.registry import ARCHITECTURE_MODES, read_card

    mode = ARCHITECTURE_MODES[architecture]
    card = {**CARD, "mode": mode, "architecture": architecture, "arguments": arguments}
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=re.escape(f"m.json: model card's {message}")):
        read_card(tmp_path / "m.safetensors")


def test_weights_holding_nan_are_neither_saved_nor_loaded(tmp_path):
    """A diverged run's NaN weights were saved, and invert crashed on them with a traceback."""
    import torch

    from napari_cdinn.core.errors import InputError
    from napari_cdinn.core.nn.cdi_net import CDINet
    from napari_cdinn.core.nn.registry import load_model, save_model

    model = CDINet(width=4)
    path = save_model(model, tmp_path / "m.safetensors", {**CARD, "arguments": {"width": 4}})
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(InputError, match=r"m2\.safetensors: weights hold NaN/Inf"):
        save_model(model, tmp_path / "m2.safetensors", {**CARD, "arguments": {"width": 4}})
    assert not (tmp_path / "m2.safetensors").exists()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    card = json.loads(path.with_suffix(".json").read_text())
    del card["weights_sha256"]  # a card of before the hash: the weights are still looked at
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: weights hold NaN/Inf$"):
        load_model(path)


def test_a_card_is_valid_json_even_when_a_score_is_nan(tmp_path):
    from napari_cdinn.core.nn.cdi_net import CDINet
    from napari_cdinn.core.nn.registry import save_model

    card = {**CARD, "arguments": {"width": 4}, "history": [[1, float("nan"), float("inf")]]}
    path = save_model(CDINet(width=4), tmp_path / "m", card)
    text = path.with_suffix(".json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert json.loads(text)["history"] == [[1, None, None]]


def test_weights_and_card_of_different_saves_are_refused(tmp_path):
    """A save killed between its two renames left a new card beside the old weights; the card
    names its weights' SHA-256, so such a pair is refused rather than mixed."""
    from napari_cdinn.core.errors import InputError
    from napari_cdinn.core.nn.cdi_net import CDINet
    from napari_cdinn.core.nn.registry import load_model, save_model

    path = save_model(CDINet(width=4), tmp_path / "m", {**CARD, "arguments": {"width": 4}})
    old_weights = path.read_bytes()
    save_model(CDINet(width=4), path, {**CARD, "arguments": {"width": 4}, "version": "2"})
    assert load_model(path)[1]["version"] == "2"
    path.write_bytes(old_weights)  # as if the kill came after the card's rename
    with pytest.raises(InputError, match=r"m\.safetensors: not the weights its card m\.json"):
        load_model(path)


def test_a_model_replaces_only_a_model_and_never_a_bundled_one(tmp_path):
    """-o settings replaced the user's settings.json; -o into the package replaced the
    bundled model."""
    from napari_cdinn.core.errors import InputError
    from napari_cdinn.core.nn.cdi_net import CDINet
    from napari_cdinn.core.nn.registry import bundled_dir, check_model_file, save_model

    (tmp_path / "settings.json").write_text('{"theme": "dark"}')
    for target in (tmp_path / "settings", tmp_path / "settings.safetensors"):
        with pytest.raises(CdinnError, match=r"settings\.json: exists and napari-cdinn did not"):
            check_model_file(target)
        with pytest.raises(CdinnError, match=r"settings\.json: exists and napari-cdinn did not"):
            save_model(CDINet(width=4), target, {**CARD, "arguments": {"width": 4}})
    assert (tmp_path / "settings.json").read_text() == '{"theme": "dark"}'
    assert not (tmp_path / "settings.safetensors").exists()
    (tmp_path / "w.safetensors").write_bytes(b"the user's")  # weights without a card
    with pytest.raises(CdinnError, match=r"w\.safetensors: exists and napari-cdinn did not"):
        check_model_file(tmp_path / "w")
    mine = save_model(CDINet(width=4), tmp_path / "mine", {**CARD, "arguments": {"width": 4}})
    assert check_model_file(mine) == mine  # a model of ours is replaced
    bundled = bundled_dir() / "cdi_nn.safetensors"
    before = bundled.read_bytes()
    for attempt in (check_model_file, lambda p: save_model(CDINet(), p, CARD)):
        with pytest.raises(InputError, match="folder of napari-cdinn's bundled models"):
            attempt(bundled)
    assert bundled.read_bytes() == before
