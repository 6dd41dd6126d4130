"""Pretraining recipes (``napari-cdinn train cdi``, training/train_*.py): options refused up
front, model files never replaced unasked, diverged or damaged runs refused by name."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

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


def test_paths_a_run_writes_are_checked_before_it_starts(tmp_path):
    """A file or /proc/nope for --out failed after all the training; a folder for --log or a
    file for --workdir with a traceback; --minutes 0 and nothing to resume wrote an untrained
    model as a normal one."""
    from napari_cdinn.core.errors import InputError
    from napari_cdinn.core.nn.registry import bundled_dir
    from napari_cdinn.core.nn.training import prepare_run

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    work = ["--workdir", str(tmp_path / "w")]
    for argv, message in (
        (["--out", str(a_file)], r"a_file: is a file, not a folder \(--out\)"),
        (["--out", "/proc/nope"], r"/proc/nope: cannot be created \(--out: "),
        (["--out", str(bundled_dir())], "folder of napari-cdinn's bundled models"),
        (["--out", str(tmp_path), "--name", "../x"], r"\.\./x: --name: give a file name"),
        (["--out", str(tmp_path), "--log", str(tmp_path)], "is a folder; give a file name for"),
        (["--out", str(tmp_path), "--minutes", "0"], "--minutes 0 and no checkpoint here"),
    ):
        with pytest.raises(InputError, match=message):
            prepare_run(parsed("cdi", *work, *argv), "cdi")
    assert not (tmp_path / "w").exists()  # a refused run leaves no folder behind
    with pytest.raises(InputError, match=r"a_file: is a file, not a folder \(--workdir\)"):
        prepare_run(parsed("cdi", "--workdir", str(a_file), "--out", str(tmp_path)), "cdi")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "checkpoint.pt").write_bytes(b"")
    args = parsed("cdi", *work, "--out", str(tmp_path / "out"), "--minutes", "0")
    weights, log = prepare_run(args, "cdi")  # a checkpoint's model, written as it is
    # the default name is not the bundled model's, and replaces no earlier run's model
    assert weights.parent == tmp_path / "out" and weights.stem.startswith("cdi_nn_")
    assert log.path == tmp_path / "w" / "train_cdi.log"
    named = parsed("cdi", *work, "--out", str(tmp_path / "out"), "--name", "cdi_nn")
    assert prepare_run(named, "cdi")[0].stem == "cdi_nn"  # a name given is kept


def bundled_recipe(monkeypatch, tmp_path, *argv: str, mode: str = "cdi", variants=()):
    """The options training/train_<mode>.py hands its training, which is not run."""
    import sys
    import types

    ran = []
    monkeypatch.setattr(sys, "argv", [f"train_{mode}.py", *argv])
    monkeypatch.setattr(
        train_options.importlib,
        "import_module",
        lambda name: types.SimpleNamespace(train=ran.append),
    )
    training = tmp_path / "training"
    train_options.run_bundled_recipe(mode, "doc", training, variants)
    return ran[0], training


def test_only_the_bundled_recipe_writes_the_bundled_model_and_its_log(
    monkeypatch, tmp_path, capsys
):
    """A quick try of training/train_cdi.py without --out replaced the bundled model and
    appended to the bundled model's log."""
    quick = ["--n-train", "200", "--n-val", "20", "--batch", "16", "--minutes", "0.01"]
    with pytest.raises(SystemExit):
        bundled_recipe(monkeypatch, tmp_path, *quick, "--workdir", str(tmp_path / "w"))
    err = capsys.readouterr().err
    assert "--n-train 200, --n-val 20, --batch 16, --minutes 0.01: not the bundled model's" in err
    assert "give --out FOLDER" in err
    args, training = bundled_recipe(monkeypatch, tmp_path, *quick, "--out", str(tmp_path / "o"))
    assert not args.bundled and args.log is None and args.workdir == Path("cdi_training")
    assert args.command == "training/train_cdi.py"
    args, training = bundled_recipe(monkeypatch, tmp_path, "--threads", "4")  # the recipe
    assert args.bundled and args.out == training.parent / "src" / "napari_cdinn" / "weights"
    assert args.log == training / "logs" / "train_cdi.log"
    assert args.workdir == training / "runs" / "cdi"
    gpu = {"batch": 256, "minutes": 5.2, "n_val": 1000}
    argv = ["--batch", "256", "--minutes", "5.2", "--n-val", "1000", "--device", "cpu"]
    args, _ = bundled_recipe(monkeypatch, tmp_path, *argv, mode="wideangle", variants=(gpu,))
    assert args.bundled


def test_a_diverged_run_saves_neither_checkpoint_nor_model(tmp_path):
    """A run whose loss went NaN (--lr inf, a huge --lr) saved NaN weights and a card with a
    bare NaN in its history; invert crashed on them."""
    import torch

    from napari_cdinn.core.errors import InputError
    from napari_cdinn.core.nn.cdi_net import CDINet
    from napari_cdinn.core.nn.training import Log, train_within_budget

    model = CDINet(size=16, width=4)
    x = torch.rand(4, 1, 16, 16)

    def run(loss_of, minutes=0.01, epoch=0):
        state = {"epoch": epoch, "elapsed_s": 0.0, "history": []}
        train_within_budget(
            model, torch.optim.Adam(model.parameters()), state, minutes=minutes, lr=1e-3,
            batches=lambda: [0], loss_of=loss_of, validation_loss=lambda: 0.5,
            checkpoint=tmp_path / "w" / "checkpoint.pt", log=Log(tmp_path / "log"),
        )  # fmt: skip

    def nan_loss(index):
        return model(x)[0].mean() * float("nan")

    with pytest.raises(InputError, match=r"w: the training diverged in epoch 1 \(a training loss"):
        run(nan_loss)

    def poisoned_step(index):  # a finite loss, then weights of NaN after the step
        loss = model(x)[0].mean()
        loss.register_hook(lambda grad: grad * float("inf"))
        return loss

    with pytest.raises(InputError, match=r"diverged in epoch 1 \((weights|a validation|a train)"):
        run(poisoned_step)
    assert not (tmp_path / "w" / "checkpoint.pt").exists()
    with pytest.raises(InputError, match="--minutes 0 and no epoch to resume"):
        run(nan_loss, minutes=0)


def test_a_damaged_or_foreign_checkpoint_is_refused_by_name(tmp_path):
    """A truncated or empty checkpoint.pt, or one from before the arguments were recorded of
    another --width, crashed the run with a traceback."""
    import torch

    from napari_cdinn.core.errors import InputError
    from napari_cdinn.core.nn.cdi_net import CDINet
    from napari_cdinn.core.nn.training import Log, resume, save_checkpoint

    checkpoint = tmp_path / "checkpoint.pt"
    log = Log(tmp_path / "log")
    model = CDINet(size=16, width=4)
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(checkpoint, model, optimizer, {"epoch": 2, "elapsed_s": 6.0, "history": []})
    whole = checkpoint.read_bytes()
    old = torch.load(checkpoint, weights_only=True)
    wider = CDINet(size=16, width=8)
    old["model"] = wider.state_dict()
    del old["arguments"]  # a checkpoint of before they were recorded
    for content in (whole[: len(whole) // 2], b"", b"not a checkpoint", None):
        if content is None:
            torch.save(old, checkpoint)
        else:
            checkpoint.write_bytes(content)
        with pytest.raises(
            InputError, match=r"checkpoint\.pt: damaged or not a checkpoint of this run: delete"
        ):
            resume(checkpoint, model, optimizer, log)
    checkpoint.write_bytes(whole)
    assert resume(checkpoint, model, optimizer, log)["epoch"] == 2


def test_a_damaged_data_cache_is_simulated_again(tmp_path):
    """A truncated data_*.npz crashed every later run with a traceback."""
    import numpy as np

    from napari_cdinn.core.nn.train_cdi import training_data
    from napari_cdinn.core.nn.training import Log

    log = Log(tmp_path / "log")
    data = training_data(4, 16, 0, tmp_path, log, processes=1)
    (cache,) = tmp_path.glob("data_*.npz")
    cache.write_bytes(cache.read_bytes()[:300])
    again = training_data(4, 16, 0, tmp_path, log, processes=1)
    np.testing.assert_array_equal(again["intensities"], data["intensities"])
    assert "damaged" in (tmp_path / "log").read_text()
    assert training_data(4, 16, 0, tmp_path, log, processes=1)["target"].shape == (4, 8, 8)


@pytest.mark.slow
def test_an_interrupted_wide_angle_simulation_resumes_with_the_chunks_it_finished(
    tmp_path, monkeypatch
):
    """Chunks of shots are cached as they finish: a run stopped in the simulation (about 14
    minutes of it on 2 cores) keeps them, and the resumed set equals an uninterrupted one."""
    import numpy as np

    from napari_cdinn.core.nn import train_wideangle
    from napari_cdinn.core.nn.training import Log

    monkeypatch.setattr(train_wideangle, "CHUNK", 2)
    whole = train_wideangle.training_data(5, 3, tmp_path / "a", Log(tmp_path / "a.log"), 1)
    assert whole["images"].shape == (5, 128, 128) and whole["images"].dtype == np.uint8
    assert not (tmp_path / "a" / "shots_n5_seed3_chunks").exists()  # joined, then removed
    # a run stopped after its first chunk, the second half-written
    chunks = tmp_path / "b" / "shots_n5_seed3_chunks"
    chunks.mkdir(parents=True)
    train_wideangle._simulate_chunk((3_000_000, 2, chunks / "chunk_00000.npz"))
    (chunks / "chunk_00001.npz").write_bytes(b"PK\x03\x04 half")
    log = Log(tmp_path / "b.log")
    resumed = train_wideangle.training_data(5, 3, tmp_path / "b", log, 1)
    assert "1 of 3 chunks of shots already simulated" in (tmp_path / "b.log").read_text()
    for key in ("images", "orientations", "radii"):
        np.testing.assert_array_equal(resumed[key], whole[key])


def test_a_resumed_run_records_each_session_on_its_card(tmp_path):
    """A run cut by a time limit and resumed elsewhere (a GPU, then a CPU; float32, then
    bfloat16) has each session's machine and precision, with its epochs, on the card: the
    card named only the last session's."""
    import torch

    from napari_cdinn.core.nn.training import Log, resume, train_within_budget, training_record

    class Tiny(torch.nn.Linear):
        def arguments(self) -> dict:
            return {}

    model = Tiny(2, 1)
    checkpoint = tmp_path / "checkpoint.pt"

    def run(session: dict, minutes: float) -> dict:
        optimizer = torch.optim.Adam(model.parameters())
        state = resume(checkpoint, model, optimizer, Log(tmp_path / "log"))
        x = torch.ones(4, 2)
        train_within_budget(
            model, optimizer, state, minutes=minutes, lr=1e-3,
            batches=lambda: [torch.arange(4)], loss_of=lambda i: model(x[i]).pow(2).mean(),
            validation_loss=lambda: 0.5, checkpoint=checkpoint, log=Log(tmp_path / "log"),
            session=session,
        )  # fmt: skip
        return state

    first = run({"machine": "GPU", "precision": "float32"}, 1e-4)
    later = first["elapsed_s"] / 60 + 1e-4  # a budget with epochs left whatever the speed
    state = run({"machine": "CPU", "precision": "bfloat16"}, later)
    args = type("Args", (), {"lr": 1e-3, "batch": 4, "clip_norm": None})()
    sessions = training_record("train.py", "mse", args, state)["sessions"]
    assert [(s["machine"], s["precision"]) for s in sessions] == [
        ("GPU", "float32"), ("CPU", "bfloat16"),
    ]  # fmt: skip
    assert sessions[0]["first_epoch"] == 1
    assert sessions[1]["first_epoch"] == sessions[0]["last_epoch"] + 1
    assert sessions[1]["last_epoch"] == state["epoch"]
    # the second session's other budget is said: the schedule decays over the new one
    assert "resumed with --minutes" in (tmp_path / "log").read_text()
    assert not list(tmp_path.glob("*.tmp"))  # the temporary checkpoint renamed, not left
