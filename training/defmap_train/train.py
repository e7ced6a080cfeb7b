"""One training loop for both networks, early stopping on protein-disjoint validation proteins.

Both networks train on batches of independent random patches, each group rotated by one of the 24 cube rotations
(DEFMap's augmentation).  The FCN can also train densely (`sampler="crops"`: every labelled output voxel of a random
crop contributes); that sees far more patches per second, but neighbouring patches are correlated and it was worse at
equal wall-clock time (training/reports), so it is not the default.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from chimerax.defmap.rotations import ROTATIONS

from .dataset import Item
from .model import build

BOX = 10
LO = BOX // 2


# ------------------------------------------------------------------ distributed data parallel (torchrun)

def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """Rank 0 alone validates, checkpoints, logs and prints."""
    return rank() == 0


def init_distributed() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call created the process group).  torchrun sets WORLD_SIZE/RANK/
    LOCAL_RANK and the rendezvous; NCCL on GPUs (one per local rank), gloo on CPU.  A caller that trains several
    models in one process creates the group once (a second group after a destroyed one hung in its rendezvous under
    torchrun, gloo); :func:`train` then leaves it alone."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if cuda else torch.device("cpu")
    if world <= 1:
        return 0, 1, device, False
    created = not torch.distributed.is_initialized()
    if created:
        if cuda:
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device, created


def _shard(n: int, part: tuple[int, int] | None) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch of n that rank part[0] of part[1] computes (all of it when not sharded)."""
    if part is None:
        return 0, n
    r, w = part
    return r * n // w, (r + 1) * n // w


def label_grid(item: Item) -> np.ndarray:
    """Start-indexed labels: value at o = label of the patch whose first voxel is o (NaN elsewhere)."""
    shape = tuple(s - BOX + 1 for s in item.grid.shape)
    g = np.full(shape, np.nan, dtype=np.float32)
    ok = np.isfinite(item.labels)
    s = item.centers[ok] - LO
    g[s[:, 0], s[:, 1], s[:, 2]] = item.labels[ok]
    return g


class CropSampler:
    """Random (crop, labels) pairs, each crop centred near a labelled voxel, rotated by one of the 24 rotations."""

    def __init__(self, items: list[Item], out: int, rng: np.random.Generator):
        self.out, self.rng, self.data = out, rng, []
        for it in items:
            lab = label_grid(it)
            pad = [(0, max(0, out - s)) for s in lab.shape]
            lab = np.pad(lab, pad, constant_values=np.nan)
            grid = np.pad(it.grid, pad, constant_values=0.0)
            starts = np.argwhere(np.isfinite(lab))
            self.data.append((grid, lab, starts))
        self.weights = np.array([len(d[2]) for d in self.data], dtype=np.float64)
        self.weights /= self.weights.sum()

    def batch(self, n: int, part: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A global batch of n crops; with part=(rank, world) every rank draws the same random numbers and keeps
        only its share, so the ranks together see exactly the one-process batch."""
        xs, ys = [], []
        o = self.out
        lo, hi = _shard(n, part)
        for i, k in enumerate(self.rng.choice(len(self.data), n, p=self.weights)):
            grid, lab, starts = self.data[k]
            s = starts[self.rng.integers(len(starts))] - self.rng.integers(0, o, 3)
            s = np.clip(s, 0, np.array(lab.shape) - o)
            x = grid[s[0]:s[0] + o + BOX - 1, s[1]:s[1] + o + BOX - 1, s[2]:s[2] + o + BOX - 1][None, None]
            y = lab[s[0]:s[0] + o, s[1]:s[1] + o, s[2]:s[2] + o][None, None]
            r = int(self.rng.integers(24))
            if not lo <= i < hi:
                continue
            xs.append(np.ascontiguousarray(ROTATIONS[r](x)))
            ys.append(np.ascontiguousarray(ROTATIONS[r](y)))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


class PatchSampler:
    """Random single patches, one random cube rotation per patch group.  With ``groups`` > 0 a batch holds ``groups``
    maps with n // groups patches each (their map index is returned), so the loss can take each map's own offset out
    of the errors the variance head learns."""

    def __init__(self, items: list[Item], rng: np.random.Generator, channels: int = 1, groups: int = 0):
        self.items = [(it.input(channels), it.centers[np.isfinite(it.labels)], it.labels[np.isfinite(it.labels)])
                      for it in items]
        self.rng, self.groups = rng, int(groups)
        self.weights = np.array([len(c) for _, c, _ in self.items], dtype=np.float64)
        self.weights /= self.weights.sum()

    def batch(self, n: int, part: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A global batch of n patches and each row's map; with part=(rank, world) every rank draws the same random
        numbers and extracts only its share of the rows, so the ranks together see exactly the one-process batch."""
        xs, ys, gs = [], [], []
        if self.groups > 0:
            picks = self.rng.choice(len(self.items), self.groups, p=self.weights)
            counts = np.bincount(picks, minlength=len(self.items)) * (n // self.groups)
        else:
            counts = np.bincount(self.rng.choice(len(self.items), n, p=self.weights), minlength=len(self.items))
        lo, hi, row = *_shard(int(counts.sum()), part), 0
        for k, ((grid, centers, labels), c) in enumerate(zip(self.items, counts)):
            if c == 0:
                continue
            sel = self.rng.integers(len(centers), size=c)
            rot = int(self.rng.integers(24))
            sel, row = sel[max(lo - row, 0):max(hi - row, 0)], row + c
            if len(sel) == 0:
                continue
            p = channel_patches(grid, centers[sel])
            xs.append(np.ascontiguousarray(ROTATIONS[rot](p)))
            ys.append(labels[sel])
            gs.append(np.full(len(sel), k))
        return (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys).astype(np.float32)[:, None]),
                torch.from_numpy(np.concatenate(gs)))


def _global_loss(loss: torch.Tensor, mask: torch.Tensor, world: int) -> tuple[float, int]:
    """(loss, labelled voxels) of the global batch: the mean of the ranks' losses (equal to the one-process loss when
    every rank has as many labels, as with the patch sampler) and the sum of their label counts."""
    if world <= 1:
        return float(loss.item()), int(mask.sum())
    t = torch.stack([loss.detach().double(), mask.sum().double()])
    torch.distributed.all_reduce(t)
    return float(t[0]) / world, int(t[1])


def _from_rank0(elapsed: float, done: bool, stop: bool, device: torch.device) -> tuple[float, bool, bool]:
    t = torch.tensor([elapsed, float(done), float(stop)], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, 0)
    return float(t[0]), bool(t[1]), bool(t[2])


def channel_patches(grid: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(N, C, box, box, box) patches of a (C, z, y, x) input."""
    from chimerax.defmap.preprocess import extract_patches
    return np.stack([extract_patches(g, centers, BOX) for g in grid], axis=1)


def loss_terms(pred: torch.Tensor, y: torch.Tensor, group: torch.Tensor | None = None,
               beta: float = 0.5) -> torch.Tensor:
    """MSE for one output.  For two (mean, log-variance) without ``group``: the beta-NLL of Seitzer et al. 2022 (the
    Gaussian NLL per label weighted by the detached variance**beta, so the mean keeps learning where the variance is
    large).  With ``group`` (each row's map): MSE for the mean plus a Gaussian NLL for the log-variance on the errors
    less their map's mean error (mean detached): a map's offset is the global flexibility scale, which no patch can
    see.  Tried (``train --groups 16``): the head still did not rank errors and the mean got worse (CHANGELOG.md)."""
    m = torch.isfinite(y)
    if pred.shape[1] == 1:
        return ((pred[m] - y[m]) ** 2).mean()
    mu, lv = pred[:, :1], pred[:, 1:2].clamp(-9.0, 3.0)
    yy = torch.where(m, y, mu.detach())
    if group is None:
        nll = 0.5 * (lv + (yy - mu) ** 2 / lv.exp())
        return (nll * (beta * lv.detach()).exp())[m].mean()
    r = (yy - mu).detach()[:, 0]
    g = torch.unique(group, return_inverse=True)[1]
    w = m[:, 0].to(r.dtype)
    offset = r.new_zeros(int(g.max()) + 1).index_add_(0, g, r * w) / \
        r.new_zeros(int(g.max()) + 1).index_add_(0, g, w).clamp(min=1.0)
    rc = (r - offset[g])[:, None]
    nll = 0.5 * (lv + rc ** 2 / lv.exp())
    return ((yy - mu) ** 2)[m].mean() + nll[m].mean()


@torch.no_grad()
def predict_item(model: torch.nn.Module, item: Item, rotation: int = 0, tile: int = 24,
                 output: int = 0) -> np.ndarray:
    """Prediction per centre voxel: the FCN runs densely on only the tiles that hold centres, the reference net on
    patch batches.  ``rotation`` rotates the whole lattice (FCN) or each patch (reference) by a cube rotation.
    ``output`` 1 gives a two-output model's log-variance."""
    model.eval()
    if not getattr(model, "fully_convolutional", False):
        from chimerax.defmap.preprocess import iter_patch_batches
        outs = []
        for b in iter_patch_batches(item.grid, item.centers, BOX, 512):
            b = np.ascontiguousarray(ROTATIONS[rotation](b)) if rotation else b
            outs.append(model(torch.from_numpy(b)).numpy().reshape(-1))
        return np.concatenate(outs)
    out_shape = tuple(s - BOX + 1 for s in item.grid.shape)
    starts = item.centers - LO
    grid = item.input(getattr(model, "in_channels", 1))
    if rotation:  # rotate the lattice and find where each centre's patch start went
        idx = np.full(out_shape, -1, dtype=np.int64)
        idx[starts[:, 0], starts[:, 1], starts[:, 2]] = np.arange(len(starts))
        ridx = ROTATIONS[rotation](idx[None, None])[0, 0]
        grid = np.ascontiguousarray(ROTATIONS[rotation](grid[None])[0])
        pos = np.argwhere(ridx >= 0)
        order = ridx[pos[:, 0], pos[:, 1], pos[:, 2]]
        starts = np.empty_like(starts)
        starts[order] = pos
    out = np.empty(len(starts), dtype=np.float32)
    tile_of = starts // tile
    keys, inv = np.unique(tile_of, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    for t, key in enumerate(keys):
        t0 = key * tile
        sub = grid[:, t0[0]:t0[0] + tile + BOX - 1, t0[1]:t0[1] + tile + BOX - 1, t0[2]:t0[2] + tile + BOX - 1]
        y = model(torch.from_numpy(np.ascontiguousarray(sub[None]))).numpy()[0, output]
        sel = np.flatnonzero(inv == t)
        rel = starts[sel] - t0
        out[sel] = y[rel[:, 0], rel[:, 1], rel[:, 2]]
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def atom_predictions(item: Item, center_pred: np.ndarray) -> np.ndarray:
    out = np.full(len(item.p2c), np.nan, dtype=np.float32)
    ok = item.p2c >= 0
    out[ok] = center_pred[item.p2c[ok]]
    return out


def validate(model: torch.nn.Module, items: list[Item]) -> float:
    """Mean over proteins of the atom-level Pearson r (what early stopping watches)."""
    per: dict[str, list[float]] = {}
    for it in items:
        per.setdefault(it.protein, []).append(pearson(atom_predictions(it, predict_item(model, it)), it.log_rmsf))
    return float(np.nanmean([np.nanmean(v) for v in per.values()]))


def train(train_items: list[Item], val_items: list[Item], *, arch: str = "fcn", minutes: float = 5.0,
          max_steps: int = 100_000, batch: int | None = None, crop: int = 16, lr: float = 1e-3, seed: int = 0,
          eval_every: int | None = None, eval_seconds: float = 30.0, patience: int = 8, init: dict | None = None,
          log: Path | None = None, threads: int | None = None,
          sampler: str = "patches", channels: int = 1, outputs: int = 1,
          groups: int = 0, schedule: str = "time") -> tuple[torch.nn.Module, dict]:
    """Adam on MSE of log10 RMSF until the time budget, max_steps or `patience` evaluations without improvement.

    ``groups`` > 0 (patch sampler, two outputs): batches of that many maps, the variance head learning each map's
    errors less the map's offset (``loss_terms``).

    Validation runs every `eval_every` steps if given, else every `eval_seconds` of wall clock (a validation pass
    costs seconds on 2 cores, so a step-based cadence would spend a third of a short budget on it).

    Under torchrun (WORLD_SIZE > 1) this is DistributedDataParallel: every rank draws the same global batch of
    `batch` and computes its share of the rows, gradients are averaged across ranks, rank 0's clock sets the learning
    rate and the stop, and rank 0 alone validates and writes the log (callers check `is_main()` before writing).

    The learning rate decays (cosine) over the time budget, so a run's result depends on how fast the machine ran it;
    ``schedule="constant"`` keeps it at ``lr``, for runs that must repeat exactly whatever the load.
    """
    if schedule not in ("time", "constant"):
        raise ValueError(f"schedule must be 'time' or 'constant', not {schedule!r}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rank_, world, device, created = init_distributed()
    part = (rank_, world) if world > 1 else None
    main = rank_ == 0
    model = build(arch, channels, outputs)
    if init is not None:
        model.load_state_dict(init)
    model.to(device)
    net = model
    if world > 1:  # DDP broadcasts rank 0's initial weights and averages gradients in backward()
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if sampler == "crops":  # FCN only: every labelled output voxel of a random crop
        if arch != "fcn":
            raise ValueError("the crops sampler needs the fully convolutional network")
        sampler_obj, batch = CropSampler(train_items, crop, rng), batch or 8
    else:
        sampler_obj, batch = PatchSampler(train_items, rng, channels, groups), batch or 256
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    t0, best, best_state, bad, hist = time.time(), -np.inf, copy.deepcopy(model.state_dict()), 0, []
    last_eval = t0
    log = log if main else None
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    logf = open(log, "a") if log else None  # noqa: SIM115
    step, seen = 0, 0
    budget = minutes * 60.0
    elapsed = 0.0
    for step in range(1, max_steps + 1):
        if schedule == "constant":
            frac = 0.0
        else:
            frac = min(1.0, (elapsed if world > 1 else time.time() - t0) / budget)  # rank 0's clock under DDP
        for g in opt.param_groups:  # cosine decay over the time budget
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
        model.train()
        x, y, *g = sampler_obj.batch(batch, part)
        x, y = x.to(device), y.to(device)
        pred = net(x)
        if pred.dim() != y.dim():  # FCN on single patches: (N,K,1,1,1) -> (N,K)
            pred = pred.reshape(len(y), -1)
        m = torch.isfinite(y)
        loss = loss_terms(pred, y, g[0].to(device) if groups > 0 and outputs > 1 else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_loss, step_seen = _global_loss(loss, m, world)
        seen += step_seen
        done = time.time() - t0 >= budget or step == max_steps
        due = step % eval_every == 0 if eval_every else time.time() - last_eval >= eval_seconds
        stop = False
        if main and (due or done):
            r = (validate(model if device.type == "cpu" else copy.deepcopy(model).cpu(), val_items) if val_items
                 else -step_loss)
            rec = {"step": step, "seconds": round(time.time() - t0, 1), "loss": step_loss, "val_r": r,
                   "labelled_patches_seen": seen}
            hist.append(rec)
            last_eval = time.time()
            if logf:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            if r > best:
                best, best_state, bad = r, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
            stop = bad >= patience
        if world > 1:  # every rank stops (and sets its learning rate) on rank 0's word
            elapsed, done, stop = _from_rank0(time.time() - t0, done, stop, device)
        if stop or done:
            break
    if logf:
        logf.close()
    if created:  # a rank that tears down while another still talks to it aborts the job (gloo)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    model.load_state_dict(best_state)
    model.cpu().eval()
    return model, {"arch": arch, "sampler": sampler,
                   "steps": step, "seconds": round(time.time() - t0, 1), "best_val_r": best,
                   "labelled_patches_seen": seen, "history": hist}
