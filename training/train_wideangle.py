"""The recipe of the bundled wide-angle network (src/napari_cdinn/weights/wideangle_nn.*).

    python training/train_wideangle.py     # the bundled model: 75k shots (~8 min), 70 min training
    python training/train_wideangle.py --minutes 1 --n-shots 1000 --out /tmp/wa   # a quick try

Interrupted runs resume from training/runs/wideangle/checkpoint.pt (the simulated shots are
cached there too); the log is training/logs/train_wideangle.log.
"""

import argparse
from pathlib import Path

from napari_cdinn.core.nn.train_wideangle import add_arguments, train

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_arguments(parser)
    parser.set_defaults(
        workdir=HERE / "runs" / "wideangle",
        out=HERE.parent / "src" / "napari_cdinn" / "weights",
        log=HERE / "logs" / "train_wideangle.log",
    )
    train(parser.parse_args())
