"""The recipe of the bundled wide-angle network (src/napari_cdinn/weights/wideangle_nn.*).

    python training/train_wideangle.py     # the bundled model: 60k shots (~14 min), 68 min training
    python training/train_wideangle.py --minutes 1 --n-shots 1000 --out /tmp/wa   # a quick try

Interrupted runs resume from training/runs/wideangle/checkpoint.pt (the simulated shots are
cached there too); the log is training/logs/train_wideangle.log.
"""

from pathlib import Path

from napari_cdinn.core.nn.train_options import run_bundled_recipe

if __name__ == "__main__":
    run_bundled_recipe("wideangle", __doc__, Path(__file__).resolve().parent)
