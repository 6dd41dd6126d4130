"""Model files: safetensors weights plus a JSON model card, bundled or saved by the user.

Loading never executes code from a file: weights are safetensors (plain tensors), the card is
JSON, and the architecture is looked up by name among the classes this package defines.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import platformdirs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError, InputWarning
from ..io.results import atomic_path, check_output
from .cdi_net import CDINet
from .ptycho_net import PtychoNet
from .wideangle_net import WideAngleNet

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "CDINet": CDINet,
    "PtychoNet": PtychoNet,
    "WideAngleNet": WideAngleNet,
}
ARCHITECTURE_MODES = {"CDINet": "cdi", "PtychoNet": "ptycho", "WideAngleNet": "wideangle"}
# (step, least) of the pattern size each architecture takes: the CDI and ptychography encoders
# halve it three times, over an object of at least 8 pixels; the wide-angle one halves it five
SIZE_STEPS = {"CDINet": (8, 16), "PtychoNet": (8, 16), "WideAngleNet": (32, 32)}


def bundled_dir() -> Path:
    return Path(str(files("napari_cdinn"))) / "weights"


@lru_cache(maxsize=1)
def bundled_names() -> frozenset[str]:
    """The names on the bundled models' cards."""
    return frozenset(
        read_card(weights).get("name") for weights in bundled_dir().glob("*.safetensors")
    )


def user_dir() -> Path:
    """Where fine-tuned models are saved (created on demand)."""
    return Path(platformdirs.user_data_dir("napari-cdinn")) / "models"


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def list_models(mode: str | None = None) -> list[Path]:
    """Weight files of bundled and user models (optionally of one mode), bundled first; a model
    whose card is missing or broken is left out with a warning naming it."""
    found = []
    for folder in (bundled_dir(), user_dir()):
        if folder.is_dir():
            for weights in sorted(folder.glob("*.safetensors")):
                try:
                    card = read_card(weights)
                except InputError as err:
                    warnings.warn(InputWarning(f"model left out: {err}"), stacklevel=2)
                    continue
                if mode is None or card.get("mode") == mode:
                    found.append(weights)
    return found


def default_model(mode: str) -> Path:
    """The bundled model of a mode (the first of ``list_models(mode)``)."""
    models = list_models(mode)
    if not models:
        label = {"cdi": "CDI", "ptycho": "ptychography", "wideangle": "wide-angle"}.get(mode, mode)
        raise InputError(None, f"no bundled {label} model found (was the package installed whole?)")
    return models[0]


def read_card(weights: str | Path) -> dict[str, Any]:
    path = card_path(Path(weights))
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(weights, f"model card {path.name} is missing beside the weights") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"model card is not valid JSON: {err}") from None
    if not isinstance(card, dict):
        raise InputError(path, "model card is not a JSON object of the card's entries")
    for key in ("architecture", "arguments", "mode", "name", "version"):
        if key not in card:
            raise InputError(path, f"model card lacks '{key}'")
    made_for = ARCHITECTURE_MODES.get(card["architecture"])
    if made_for is not None and card["mode"] != made_for:
        raise InputError(
            path,
            f"model card says mode '{card['mode']}', but its architecture "
            f"{card['architecture']} is a {MODE_NAMES[made_for]} network",
        )
    arguments = card["arguments"]
    if not isinstance(arguments, dict):
        raise InputError(path, "model card's 'arguments' is not a JSON object")
    for key, least in (("size", 1), ("width", 2), ("patch", 1), ("mixing", 0)):  # where given
        value = arguments.get(key, least)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(
                path, f"model card's '{key}' is {value!r}, not a whole number >= {least}"
            )
    step, least = SIZE_STEPS.get(card["architecture"], (1, 1))
    size = arguments.get("size", least)
    if size < least or size % step:
        raise InputError(
            path,
            f"model card's 'size' is {size}: {card['architecture']} takes multiples of {step} "
            f"from {least}",
        )
    for key in ("equalise",):  # "no" is a true value in Python: a JSON true or false only
        if key in arguments and not isinstance(arguments[key], bool):
            raise InputError(path, f"model card's '{key}' is {arguments[key]!r}, not true or false")
    return card


def weights_path(path: str | Path) -> Path:
    """``path`` ending in .safetensors: added, not put in place of what follows a dot in the
    name (``scan_v1.2_retrained`` must not become ``scan_v1.safetensors``)."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


def refuse_bundled_folder(weights: Path, bundled: bool = False) -> None:
    """Refuse a model file in the bundled models' folder, unless ``bundled``."""
    if not bundled and weights.parent.resolve() == bundled_dir().resolve():
        raise InputError(
            weights,
            "is in the folder of napari-cdinn's bundled models, which only their recipes "
            "(training/train_<mode>.py) write; choose another folder",
        )


def check_model_file(
    weights: str | Path, inputs: Sequence[str | Path] = (), *, bundled: bool = False
) -> Path:
    """``weights`` (.safetensors added) as a model file to write, checked before any training:
    it and its card may be written, replace no file but a model's own (``check_output``), and
    are not in the bundled models' folder unless ``bundled`` (their recipes,
    training/train_<mode>.py, alone write there: a model put there becomes a bundled one)."""
    weights = weights_path(weights)
    refuse_bundled_folder(weights, bundled)
    for target in (weights, card_path(weights)):
        check_output(target, inputs, None, "model")
    return weights


def save_model(
    model: nn.Module, weights: str | Path, card: dict[str, Any], *, bundled: bool = False
) -> Path:
    """Write weights (safetensors) and card (JSON) side by side, each whole or not at all,
    never into the bundled models' folder unless ``bundled`` (``check_model_file``); the card
    records the weights' SHA-256, so a save killed between the two renames leaves a pair that
    :func:`load_model` refuses rather than mixes.  Weights holding NaN/Inf (a diverged
    training) are refused: they would answer NaN for every pattern."""
    weights = weights_path(weights)
    refuse_bundled_folder(weights, bundled)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not all_finite(state):
        raise InputError(weights, "weights hold NaN/Inf (a diverged training?): not saved")
    weights.parent.mkdir(parents=True, exist_ok=True)
    # both written before either replaces its file: a failed card leaves no new weights beside
    # an old card
    with (
        atomic_path(weights, writes="model") as new_weights,
        atomic_path(card_path(weights), writes="model") as new_card,
    ):
        save_file(state, str(new_weights))
        card = {**finite_json(card), "weights_sha256": sha256(new_weights)}
        new_card.write_text(json.dumps(card, indent=2, default=str, allow_nan=False) + "\n")
    return weights


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of a state dict is free of NaN and Inf."""
    return all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point())


def finite_json(value: Any) -> Any:
    """``value`` with its non-finite floats as None: JSON has no NaN (a bare NaN in a card made
    it unreadable to other JSON readers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


MODE_NAMES = {"cdi": "CDI", "ptycho": "ptychography", "wideangle": "wide-angle"}


def require_mode(card: dict[str, Any], mode: str, source: object) -> None:
    """Refuse, naming ``source``, a model whose card says it is for another mode."""
    if card.get("mode") != mode:
        raise InputError(source, f"a {card.get('mode')} model, not a {MODE_NAMES[mode]} one")


def checked_card(weights: str | Path, mode: str | None = None) -> dict[str, Any]:
    """The card of the model file ``weights``, refused by name when the file is missing or
    (``mode`` given) the model is of another mode: what to check before any work."""
    weights = Path(weights)
    if not weights.is_file():
        found = "a folder, not a model file" if weights.is_dir() else "model file not found"
        raise InputError(weights, found)
    card = read_card(weights)
    if mode is not None:
        require_mode(card, mode, weights)
    return card


def load_model(weights: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Build the card's architecture and load the weights; a bad file gets a clear InputError."""
    weights = Path(weights)
    card = checked_card(weights)
    architecture = ARCHITECTURES.get(card["architecture"])
    if architecture is None:
        raise InputError(weights, f"unknown architecture '{card['architecture']}' in its card")
    try:
        model = architecture(**card["arguments"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(
            weights, f"card arguments do not fit {card['architecture']}: {err}"
        ) from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(weights, f"not a readable safetensors file: {err}") from None
    if "weights_sha256" in card and card["weights_sha256"] != sha256(weights):
        raise InputError(
            weights,
            f"not the weights its card {card_path(weights).name} describes (another SHA-256: "
            "a save interrupted between the two files?); save or copy the model again",
        )
    if not all_finite(state):
        raise InputError(weights, "weights hold NaN/Inf")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise InputError(weights, f"weights do not match the architecture: {first}") from None
    return model.to(device).eval(), card
