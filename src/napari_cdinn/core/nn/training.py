"""Pieces both training scripts share: a log that survives restarts, the learning-rate schedule,
and the checkpoint that lets an interrupted run resume."""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .registry import all_finite, check_model_file, user_dir
from .train_options import check_counts

CHECKPOINT = "checkpoint.pt"  # in --workdir
CHECKPOINT_KEYS = {"model", "optimizer", "epoch", "elapsed_s", "history"}


class Log:
    """Print a timestamped line and append it to a file (checked as it is made, so a log that
    cannot be written is said before the run)."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            raise InputError(path, "is a folder; give a file name for the log (--log)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a"):
                pass
        except OSError as err:
            raise InputError(path, f"the log cannot be written ({err.strerror or err})") from None

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")


def writable_folder(folder: Path, option: str) -> Path:
    """``folder`` created if need be and checked writable, or an InputError naming it and
    ``option`` (a file given for a folder, /proc/..., a read-only place)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, f"is a file, not a folder ({option})")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(folder, f"cannot be created ({option}: {err.strerror or err})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(folder, f"is not writable ({option})")
    return folder


def prepare_run(args: argparse.Namespace, mode: str) -> tuple[Path, Log]:
    """Everything a pretraining run writes, checked before its minutes of simulation and
    training: ``--out`` (default: the user models folder) and ``--workdir`` writable folders,
    ``--log`` a file that can be appended to, ``--name`` a plain file name whose model
    replaces no file but a model's (never a bundled one: ``args.bundled`` is set only by the
    bundled recipes), and a time budget or a checkpoint to write a model of.  The default
    name gets a timestamp outside the bundled folder, so the model is neither taken for the
    bundled one (layers labelled "(NN)") nor replaces an earlier run's; a name given is kept.
    Returns the weights file and the log."""
    check_counts(args)
    bundled = getattr(args, "bundled", False)
    if args.name is None:
        args.name = f"{mode}_nn" if bundled else f"{mode}_nn_{time.strftime('%Y%m%d_%H%M%S')}"
    if args.name in ("", ".", "..") or Path(args.name).name != args.name:
        raise InputError(args.name, "--name: give a file name without folders (--out: the folder)")
    # the refusals that need no folder first: a refused run leaves none behind
    log_file = args.log or args.workdir / f"train_{mode}.log"
    if log_file.is_dir():
        raise InputError(log_file, "is a folder; give a file name for the log (--log)")
    if args.minutes == 0 and not (args.workdir / CHECKPOINT).exists():
        raise InputError(
            args.workdir,
            "--minutes 0 and no checkpoint here to resume: the model would be untrained; give "
            "a time budget",
        )
    args.out = writable_folder(args.out or user_dir(), "--out")
    weights = check_model_file(args.out / f"{args.name}.safetensors", bundled=bundled)
    writable_folder(args.workdir, "--workdir")
    return weights, Log(log_file)


def cosine_lr(base: float, fraction: float) -> float:
    """Cosine decay from ``base`` to 2 % of it over the time budget (``fraction`` 0 -> 1)."""
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


def training_precision(choice: str) -> str:
    """ "bfloat16" or "float32" for a ``--precision`` option: "auto" takes bfloat16 where the
    CPU computes it natively (AVX-512 BF16, AMX); elsewhere it is emulated and slower."""
    if choice != "auto":
        return choice
    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


def machine(device: str = "cpu") -> str:
    """What trained a model, for its card: the CPU threads, or the GPU."""
    where = f"{platform.machine()}, {torch.get_num_threads()} CPU threads"
    if device.startswith("cuda"):
        where += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return f"{where}, torch {torch.__version__}"


def training_record(script: str, loss: str, args, state: dict) -> dict:
    """The model card's "training" entry, the same for every pretraining script; ``script``
    unless ``args.command`` says what ran it (``napari-cdinn train cdi``)."""
    return {
        "script": getattr(args, "command", script),
        "loss": loss,
        "optimizer": f"Adam, lr {args.lr} cosine-decayed over the time budget, batch {args.batch}"
        + (f", gradient norm clipped at {args.clip_norm:g}" if args.clip_norm else "")
        + (
            ", features in bfloat16 autocast (weights, head and loss float32)"
            if getattr(args, "precision", "float32") == "bfloat16"
            else ""
        ),
        "epochs": state["epoch"],
        "minutes": round(state["elapsed_s"] / 60, 1),
        "machine": machine(getattr(args, "device", "cpu")),
        # what ran which epochs, where a run was resumed elsewhere (a GPU run cut by its time
        # limit, finished on a CPU) or with other precision
        "sessions": state.get("sessions", []),
        "history": state["history"],
    }


def session_facts(args) -> dict:
    """The facts of this session of a run (it may resume on another machine): recorded per
    session in the checkpoint and on the card."""
    return {
        "machine": machine(getattr(args, "device", "cpu")),
        "precision": getattr(args, "precision", "float32"),
    }


# the options that decide a run's data and optimisation: a checkpoint resumes only its own
RECIPE_OPTIONS = ("seed", "n_train", "n_val", "size", "n_scans", "n_val_scans", "n_shots",
                  "batch", "lr", "clip_norm")  # fmt: skip


def data_recipe(args) -> dict:
    """The run's values of ``RECIPE_OPTIONS`` (those its recipe has)."""
    return {name: getattr(args, name) for name in RECIPE_OPTIONS if hasattr(args, name)}


def resume(checkpoint: Path, model, optimizer, log: Log, recipe: dict | None = None) -> dict:
    """Training state from ``checkpoint`` if it exists (weights only: no code runs); a
    checkpoint of a network with other arguments (width, patch, ...) or of another
    ``recipe`` (seed, data sizes, batch, learning rate: ``data_recipe``) is refused by name,
    so a quick try never lends its model to a full run (checkpoints from before the recipe
    was recorded resume as they did)."""
    state = {"epoch": 0, "elapsed_s": 0.0, "history": [], "recipe": recipe or {}}
    if checkpoint.exists():
        damaged = InputError(
            checkpoint,
            "damaged or not a checkpoint of this run: delete it or choose another --workdir",
        )
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)  # GPU-made too
        except Exception:  # truncated, empty, not a torch file: whatever the damage
            raise damaged from None
        if not isinstance(saved, dict) or not saved.keys() >= CHECKPOINT_KEYS:
            raise damaged
        if saved.get("arguments", model.arguments()) != model.arguments():
            raise InputError(
                checkpoint,
                f"a checkpoint of a network with arguments {saved['arguments']}, not "
                f"{model.arguments()}: choose another --workdir or delete it to start afresh",
            )
        if saved.get("recipe", state["recipe"]) != state["recipe"]:
            raise InputError(
                checkpoint,
                f"a checkpoint of a run with {saved['recipe']}, not {state['recipe']}: choose "
                "another --workdir or delete it to start afresh",
            )
        if not all_finite(saved["model"]):
            raise InputError(
                checkpoint, "weights hold NaN/Inf (a diverged run): delete it or choose another "
                "--workdir",
            )  # fmt: skip
        try:  # an old checkpoint (no arguments recorded) of another width: sizes differ
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError):
            raise damaged from None
        state.update({k: saved[k] for k in ("epoch", "elapsed_s", "history")})
        state["sessions"] = saved.get("sessions", [])  # checkpoints before it have none
        if "minutes" in saved:
            state["minutes"] = saved["minutes"]
        log(f"resumed from epoch {state['epoch']} ({state['elapsed_s'] / 60:.1f} min trained)")
    return state


def cached(cache: Path, log: Log, keys: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The arrays of a simulated-data cache, or None when there is none or it is damaged
    (truncated, not an NPZ file, arrays missing): said in the log, and simulated again."""
    if not cache.exists():
        return None
    try:
        with np.load(cache) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        # damage, not a lack of memory: that would be simulated again for nothing
        log(f"{cache}: damaged ({type(err).__name__}: {err}); simulating it again")
        return None
    missing = set(keys) - arrays.keys()
    if missing:
        log(f"{cache}: lacks {', '.join(sorted(missing))}; simulating it again")
        return None
    log(f"loading cached training data {cache}")
    return arrays


def save_cache(cache: Path, data: dict[str, np.ndarray]) -> None:
    """Write a cache whole or not at all (a temporary file of this process renamed onto it)."""
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(cache)


def save_checkpoint(checkpoint: Path, model, optimizer, state: dict) -> None:
    """Write atomically, so a run killed mid-write still resumes from the previous epoch (the
    temporary file is this process's: two runs in one workdir do not write into one file)."""
    tmp = checkpoint.with_name(f"{checkpoint.name}.{os.getpid()}.tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "arguments": model.arguments(),
            **state,
        },
        tmp,
    )
    tmp.replace(checkpoint)


def diverged(checkpoint: Path, epoch: int, what: str) -> None:
    """Refuse to go on, or to write a checkpoint or model, after a step gave NaN/Inf: such a
    model answers NaN for every pattern."""
    raise InputError(
        checkpoint.parent,
        f"the training diverged in epoch {epoch} ({what}); nothing of this epoch is saved: "
        "a smaller --lr or a --clip-norm may help",
    )


def train_within_budget(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    *,
    minutes: float,
    lr: float,
    batches: Callable[[], Iterable[torch.Tensor]],
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    validation_loss: Callable[[], float],
    checkpoint: Path,
    log: Log,
    clip_norm: float | None = None,
    session: dict | None = None,
) -> None:
    """Epochs until ``minutes`` of training are spent (across resumes): each epoch runs the
    index batches of ``batches()`` with a cosine-decayed learning rate (each step's gradient
    clipped to ``clip_norm`` when given), then logs the validation loss and writes the
    checkpoint; ``state`` (epoch, elapsed_s, history) is updated in place.  A loss or weight
    that turns NaN/Inf stops the run before anything of it is saved (``diverged``)."""
    budget = minutes * 60
    if state["epoch"] == 0 and budget <= 0:  # an untrained model is no model to write
        raise InputError(checkpoint.parent, "--minutes 0 and no epoch to resume: nothing trained")
    if state.get("minutes", minutes) != minutes:  # the schedule is laid over the budget
        log(
            f"resumed with --minutes {minutes:g}, the run before with {state['minutes']:g}: the "
            "learning-rate schedule now decays over the new budget"
        )
    state["minutes"] = minutes
    sessions = state.setdefault("sessions", [])
    this_session = {**(session or {}), "first_epoch": state["epoch"] + 1}
    while state["elapsed_s"] < budget:
        model.train()
        epoch_start = time.time()
        total, n_batches = 0.0, 0
        for index in batches():  # (never empty: the options ask for n >= batch >= 1)
            fraction = min(1.0, (state["elapsed_s"] + time.time() - epoch_start) / budget)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, fraction)
            loss = loss_of(index)
            optimizer.zero_grad()
            loss.backward()
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            total += loss.item()
            n_batches += 1
            if not math.isfinite(total):
                diverged(checkpoint, state["epoch"] + 1, f"a training loss of {loss.item():g}")
            if fraction >= 1.0:
                break
        model.eval()
        with torch.no_grad():
            val_loss = validation_loss()
        if not math.isfinite(val_loss):
            diverged(checkpoint, state["epoch"] + 1, f"a validation loss of {val_loss:g}")
        if not all_finite(model.state_dict()):
            diverged(checkpoint, state["epoch"] + 1, "weights of NaN/Inf")
        state["epoch"] += 1
        state["elapsed_s"] += time.time() - epoch_start
        state["history"].append([state["epoch"], total / n_batches, val_loss])
        if not sessions or sessions[-1] is not this_session:
            sessions.append(this_session)  # a session that trains no epoch is not recorded
        this_session["last_epoch"] = state["epoch"]
        log(
            f"epoch {state['epoch']}: train {total / n_batches:.4f} val {val_loss:.4f} "
            f"lr {optimizer.param_groups[0]['lr']:.2e} ({state['elapsed_s'] / 60:.1f} min)"
        )
        save_checkpoint(checkpoint, model, optimizer, state)
