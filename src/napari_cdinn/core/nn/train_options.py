"""Command-line options of the pretraining recipes, kept free of torch so ``napari-cdinn
--help`` is quick, and the one entry the scripts in ``training/`` share."""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path

from ..errors import CdinnError


def at_least(low: float, kind: type = int, high: float = float("inf"), above: bool = False):
    """An argparse type: a finite number of ``kind`` not below ``low`` (0 or negative epochs,
    sizes or steps are refused up front instead of quietly doing nothing or taking the
    default), above it when ``above`` (a gradient clipped to norm 0 does not learn), and not
    above ``high``; NaN and infinity are refused (an infinite time budget never ends)."""

    def number(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
        if above and not value > low:
            raise argparse.ArgumentTypeError(f"{text}: must be more than {low:g}")
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {low:g}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text}: must be at most {high:g}")
        return value

    return number


MIN_SIZE = 16  # an object in the central half of its grid: 8 x 8 pixels at least


def multiple_of_8(text: str) -> int:
    """An argparse type for pattern sizes: the networks halve them three times, and the
    simulated crystal needs room (at 8 pixels its convex support is never drawn: a hang)."""
    value = at_least(MIN_SIZE)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{text}: must be a multiple of 8")
    return value


MAX_MINUTES = 7 * 24 * 60.0  # a week: a longer budget is a typing slip


def _common(parser: argparse.ArgumentParser, mode: str, width: int, batch: int, minutes: float):
    """The options every recipe has: network width, optimiser, time budget, seeds, folders."""
    parser.add_argument(  # the encoder's first layer has width // 2 channels
        "--width", type=at_least(2), default=width
    )
    parser.add_argument("--batch", type=at_least(1), default=batch)
    parser.add_argument("--lr", type=at_least(0.0, float, high=1.0, above=True), default=2e-3)
    parser.add_argument(
        "--clip-norm", type=at_least(0.0, float, above=True),
        help="clip each step's gradient to this norm (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--minutes", type=at_least(0.0, float, high=MAX_MINUTES), default=minutes,
        help="training time budget (0: only write the model of a checkpoint in --workdir)",
    )  # fmt: skip
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument(
        "--workdir", type=Path, default=Path(f"{mode}_training"), help="cache + checkpoint"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for weights + card (default: the user models folder; for the training "
        "scripts' bundled recipe, the package's weights)",
    )
    parser.add_argument(
        "--name",
        help=f"the model's name (default: {mode}_nn_YYYYMMDD_HHMMSS; for the training scripts' "
        f"bundled recipe, {mode}_nn)",
    )
    parser.add_argument(
        "--log",
        type=Path,
        help=f"log file (default: WORKDIR/train_{mode}.log; for the training scripts' bundled "
        f"recipe, training/logs/train_{mode}.log)",
    )
    parser.add_argument("--threads", type=at_least(1), default=2, help="CPU threads and processes")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="where the network trains (auto: a CUDA GPU when there is one; the bundled cdi "
        "and ptycho models were trained on 2 CPU cores, the wideangle one on a GPU); the "
        "simulation runs on the CPU",
    )  # fmt: skip


def add_cdi_arguments(parser: argparse.ArgumentParser) -> None:
    """CDI pretraining, shared by ``napari-cdinn train cdi`` and training/train_cdi.py."""
    parser.add_argument("--n-train", type=at_least(1), default=100_000, help="at least --batch")
    parser.add_argument("--n-val", type=at_least(1), default=2_000)
    parser.add_argument("--size", type=multiple_of_8, default=64)
    _common(parser, "cdi", width=16, batch=128, minutes=75.0)


def add_ptycho_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-scans", type=at_least(2), default=600)
    parser.add_argument("--n-val-scans", type=at_least(1), default=10, help="fewer than --n-scans")
    parser.add_argument(
        "--mixing",
        type=at_least(0),
        default=16,
        help="channels of the global bottleneck layer, 0: none",
    )
    parser.add_argument(
        "--patch", type=int, default=64, choices=(32, 64), help="predicted patch (middle)"
    )
    _common(parser, "ptycho", width=12, batch=64, minutes=45.0)


def add_wideangle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-shots", type=at_least(2), default=60_000)
    parser.add_argument(
        "--n-val", type=at_least(1), default=2000, help="validation shots (simulated apart)"
    )
    parser.add_argument(
        "--equalise", action=argparse.BooleanOptionalAction, default=True,
        help="replace each image by its pixels' ranks first (nn.wideangle_net.equalised)",
    )  # fmt: skip
    parser.add_argument(
        "--stem", choices=("pool", "patchify"), default="pool",
        help="the network's first layer: 2 x 2 binning then a 3 x 3 convolution, or 4 x 4 tiles "
        "of the full-resolution image (nn.wideangle_net.WideAngleNet)",
    )  # fmt: skip
    parser.add_argument(
        "--orientation", choices=("quaternion", "embedding", "both"), default="both",
        help="what the network answers for the orientation: a unit quaternion (loss: the "
        "misorientation modulo the group), the symmetry-invariant embedding "
        "(core.icosahedral.embedding, read back by its nearest orientation), or both",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=("auto", "bfloat16", "float32"), default="auto",
        help="arithmetic of the network's features in training steps on a CPU: bfloat16 "
        "(autocast) makes a step about 1.5 x faster on CPUs with AVX-512 BF16 or AMX and is "
        "emulated, slower, on others; auto (default): bfloat16 where the CPU has it (weights, "
        "head, loss and data stay float32). On an AMD EPYC its 30 epochs in the 68 minutes "
        "instead of 23 gave 2.11 instead of 2.28 deg (README); a GPU trains in float32",
    )  # fmt: skip
    _common(parser, "wideangle", width=16, batch=64, minutes=68.0)


def check_counts(args: argparse.Namespace) -> None:
    """What one option's type cannot check: validation data carved out of the data must leave
    training data (CDI examples, ptychography scans; the wide-angle validation shots are a
    set of their own), and (for recipes counted in examples, not scans) at least one batch of
    training data: an epoch without a batch divided by zero."""
    if hasattr(args, "n_scans"):
        total, validation = args.n_scans, args.n_val_scans
    elif hasattr(args, "n_shots"):
        total, validation = args.n_shots, 0  # --n-val shots are simulated apart
    else:
        total, validation = args.n_train + args.n_val, args.n_val
    if validation >= total:
        raise CdinnError(
            f"the validation set ({validation}) must be smaller than the data ({total})"
        )
    if not hasattr(args, "n_scans") and total - validation < args.batch:
        raise CdinnError(
            f"{total - validation} training examples: fewer than one batch of {args.batch}"
        )


RECIPES = {
    "cdi": add_cdi_arguments,
    "ptycho": add_ptycho_arguments,
    "wideangle": add_wideangle_arguments,
}


# options that change where or how fast a run goes, not the model it makes
MACHINE_OPTIONS = ("workdir", "out", "log", "threads", "device")


def run_bundled_recipe(
    mode: str, doc: str, training_folder: Path, variants: tuple[dict, ...] = ()
) -> Path:
    """training/train_<mode>.py.  The bundled model's recipe (every option at its default but
    those of ``MACHINE_OPTIONS``, or as in one of ``variants``) writes the package's model by
    default, its cache and checkpoint in training/runs/<mode>, its log in training/logs.  Any
    other recipe (a quick try) must say where its model goes (--out), is never written into
    the package, and keeps its cache and log out of training/ unless told: it is refused up
    front otherwise, before it could replace the bundled model or add to its log."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    RECIPES[mode](parser)
    parser.set_defaults(workdir=None)
    args = parser.parse_args()
    defaults = vars(parser.parse_args([]))
    changed = {k: v for k, v in vars(args).items() if k not in MACHINE_OPTIONS and v != defaults[k]}
    package = training_folder.parent / "src" / "napari_cdinn" / "weights"
    if args.out is None and changed not in ({}, *variants):
        given = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changed.items())
        parser.error(
            f"{given}: not the bundled model's recipe; give --out FOLDER for its model (the "
            f"default, {package}, and the log in {training_folder / 'logs'} are the bundled "
            "model's)"
        )
    recipe = changed in ({}, *variants)
    args.out = args.out or package
    args.bundled = recipe and args.out.resolve() == package.resolve()
    args.command = f"training/train_{mode}.py"
    # its checkpoint resumes only this recipe; another's goes where napari-cdinn train's does
    args.workdir = args.workdir or (training_folder / "runs" / mode if recipe else None)
    args.workdir = args.workdir or Path(f"{mode}_training")
    if args.bundled:
        args.log = args.log or training_folder / "logs" / f"train_{mode}.log"
    module = importlib.import_module(f"{__package__}.train_{mode}")
    try:
        return module.train(args)
    except CdinnError as err:  # a bad option, a checkpoint of another run: one line, exit 2
        parser.error(str(err))
