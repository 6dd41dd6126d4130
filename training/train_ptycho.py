"""The recipe of the bundled ptychography network (src/napari_cdinn/weights/ptycho_nn.*).

    python training/train_ptycho.py              # the bundled model: 600 scans (~71k patterns), 75 min
    python training/train_ptycho.py --minutes 1 --n-scans 20 --out /tmp/ptycho   # a quick try

Interrupted runs resume from training/runs/ptycho/checkpoint.pt; the log is
training/logs/train_ptycho.log.
"""

import argparse
from pathlib import Path

from napari_cdinn.core.nn.train_ptycho import add_arguments, train

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    parser.set_defaults(
        workdir=HERE / "runs" / "ptycho",
        out=HERE.parent / "src" / "napari_cdinn" / "weights",
        log=HERE / "logs" / "train_ptycho.log",
    )
    train(parser.parse_args())
