"""The recipe of the bundled wide-angle network (src/napari_cdinn/weights/wideangle_nn.*).

    # the bundled model, on a CUDA GPU (an NVIDIA H200: 60k shots simulated in 2.5 min on its
    # 16 cores, 69 epochs in 5.2 min, 8.5 min to the card)
    python training/train_wideangle.py --device cuda --threads 16 --batch 256 --minutes 5.2 --n-val 1000
    # on 2 CPU cores: 60k shots (~14 min), 68 min training, 83 min in all (2.11 deg, README)
    python training/train_wideangle.py
    python training/train_wideangle.py --minutes 1 --n-shots 1000 --n-val 100 --workdir /tmp/wa --out /tmp/wa --log /tmp/wa/log  # a quick try

Any other choice of options is refused unless --out names the folder for its model: only
the bundled recipe writes into the package and appends to training/logs.
Interrupted runs resume from training/runs/wideangle/checkpoint.pt (the simulated shots are
cached there too); the log is training/logs/train_wideangle.log.
"""

from pathlib import Path

from napari_cdinn.core.nn.train_options import run_bundled_recipe

if __name__ == "__main__":
    # the bundled model's recipe on a GPU (above) is one too: the package's model by default
    GPU_RECIPE = {"batch": 256, "minutes": 5.2, "n_val": 1000}
    run_bundled_recipe("wideangle", __doc__, Path(__file__).resolve().parent, (GPU_RECIPE,))
