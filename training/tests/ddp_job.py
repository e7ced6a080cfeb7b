"""One short training run on synthetic data, for test_ddp.py: plain `python ddp_job.py OUT.json` is the one-process
run, `torchrun --standalone --nproc_per_node 2 ddp_job.py OUT.json` the DistributedDataParallel one.  Rank 0 writes
the per-step losses of the global batch to OUT.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # defmap_train without `pip install -e training`

STEPS, BATCH = 8, 32


def items():
    from defmap_train.dataset import Item
    out = []
    for k in range(3):  # three 24³ "maps" whose labels depend on the local density, so the loss can fall
        rng = np.random.default_rng(100 + k)
        grid = np.abs(rng.normal(size=(24, 24, 24))).astype(np.float32)
        centers = np.stack(np.meshgrid(*[np.arange(5, 19, 2)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
        labels = np.array([grid[c[0] - 2:c[0] + 3, c[1] - 2:c[1] + 3, c[2] - 2:c[2] + 3].mean() for c in centers],
                          dtype=np.float32)
        n = len(centers)
        out.append(Item(protein=f"p{k}", grid=grid, centers=centers, labels=labels, p2c=np.arange(n),
                        log_rmsf=labels.copy(), res_index=np.arange(n), baselines={}, path=""))
    return out


def main(out: str) -> None:
    import torch

    from defmap_train.train import is_main, train
    torch.set_num_threads(1)
    _, info = train(items(), [], arch="fcn", minutes=10.0, max_steps=STEPS, batch=BATCH, seed=3, eval_every=1,
                    patience=10 ** 6, lr=1e-3,
                    schedule="constant")  # a wall-clock schedule would give each run its own learning rates
    if is_main():
        Path(out).write_text(json.dumps({"losses": [h["loss"] for h in info["history"]], "steps": info["steps"],
                                         "seen": info["labelled_patches_seen"]}))


if __name__ == "__main__":
    main(sys.argv[1])
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # as defmap_train.cli does under torchrun (see there)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
