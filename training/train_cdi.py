"""The recipe of the bundled CDI network (src/napari_cdinn/weights/cdi_nn.*).

    python training/train_cdi.py                 # 100k simulated patterns, 75 minutes, 2 threads
    python training/train_cdi.py --minutes 2 --n-train 5000 --out /tmp/cdi     # a quick try

Interrupted runs resume from training/runs/cdi/checkpoint.pt; the log is training/logs/train_cdi.log.
"""

import argparse
from pathlib import Path

from napari_cdinn.core.nn.train_cdi import train
from napari_cdinn.core.nn.train_options import add_arguments

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    parser.set_defaults(
        minutes=75.0,
        workdir=HERE / "runs" / "cdi",
        out=HERE.parent / "src" / "napari_cdinn" / "weights",
        log=HERE / "logs" / "train_cdi.log",
    )
    train(parser.parse_args())
