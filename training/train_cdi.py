"""The recipe of the bundled CDI network (src/napari_cdinn/weights/cdi_nn.*).

    python training/train_cdi.py                 # 100k simulated patterns, 75 minutes, 2 threads
    python training/train_cdi.py --minutes 2 --n-train 5000 --workdir /tmp/cdi --out /tmp/cdi --log /tmp/cdi/log  # a quick try
    # (a quick try keeps its cache, checkpoint and log out of training/: a checkpoint resumes
    # only a run of its own recipe, and the log here is the bundled model's)

Any other choice of options is refused unless --out names the folder for its model: only
the bundled recipe writes into the package and appends to training/logs.
Interrupted runs resume from training/runs/cdi/checkpoint.pt; the log is training/logs/train_cdi.log.
"""

from pathlib import Path

from napari_cdinn.core.nn.train_options import run_bundled_recipe

if __name__ == "__main__":
    run_bundled_recipe("cdi", __doc__, Path(__file__).resolve().parent)
