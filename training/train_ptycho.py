"""The recipe of the bundled ptychography network (src/napari_cdinn/weights/ptycho_nn.*).

    python training/train_ptycho.py              # the bundled model: 600 scans (~71k patterns), 45 min
    python training/train_ptycho.py --minutes 1 --n-scans 20 --workdir /tmp/ptycho --out /tmp/ptycho --log /tmp/ptycho/log  # a quick try

Any other choice of options is refused unless --out names the folder for its model: only
the bundled recipe writes into the package and appends to training/logs.
Interrupted runs resume from training/runs/ptycho/checkpoint.pt; the log is
training/logs/train_ptycho.log.
"""

from pathlib import Path

from napari_cdinn.core.nn.train_options import run_bundled_recipe

if __name__ == "__main__":
    run_bundled_recipe("ptycho", __doc__, Path(__file__).resolve().parent)
