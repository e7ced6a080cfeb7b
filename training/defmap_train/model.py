"""The two networks: DEFMap's reference CNN and the fully convolutional fast variant shipped by default."""

from __future__ import annotations

import torch
from torch import nn


class DEFMapNet(nn.Module):
    """Matsumoto et al. 2021: 3 x [Conv3d k4 'same' -> LeakyReLU -> MaxPool 2 -> Dropout 0.2] -> 1024 -> 1024 -> 1.

    Input (N, 1, 10, 10, 10), output (N, 1) log10 RMSF.
    """

    fully_convolutional = False

    def __init__(self, box: int = 10, dropout: float = 0.2):
        super().__init__()
        layers, c_in, size = [], 1, box
        for c in (64, 128, 256):
            layers += [nn.Conv3d(c_in, c, 4, padding="same"), nn.LeakyReLU(0.01), nn.MaxPool3d(2), nn.Dropout(dropout)]
            c_in, size = c, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256 * size ** 3, 1024), nn.LeakyReLU(0.01),
                                  nn.Linear(1024, 1024), nn.LeakyReLU(0.01), nn.Linear(1024, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DEFMapFCN(nn.Module):
    """Valid convolutions whose receptive field is exactly the 10³ patch, so one pass over a whole grid gives every
    patch's prediction: (N,C,D,H,W) -> (N,K,D-9,H-9,W-9), output voxel o = the patch whose first voxel is o.
    C = 1 (map) or 2 (map, fitted-model density); K = 1 (log10 RMSF) or 2 (log10 RMSF, log-variance).

    k3 16 -> k3 32 -> k3 64 -> k3 64 -> k2 128 (the "dense" layer) -> k1 64 -> k1 1; deterministic (no dropout, no
    batch norm) so per-patch and dense evaluation agree exactly.
    """

    fully_convolutional = True

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64), hidden: int = 128, box: int = 10,
                 in_channels: int = 1, outputs: int = 1):
        super().__init__()
        self.in_channels, self.outputs = int(in_channels), int(outputs)
        layers, c_in, rf = [], self.in_channels, 1
        for c in widths:
            layers += [nn.Conv3d(c_in, c, 3), nn.LeakyReLU(0.01)]
            c_in, rf = c, rf + 2
        last = box - rf + 1
        layers += [nn.Conv3d(c_in, hidden, last), nn.LeakyReLU(0.01), nn.Conv3d(hidden, hidden // 2, 1),
                   nn.LeakyReLU(0.01), nn.Conv3d(hidden // 2, self.outputs, 1)]
        self.net = nn.Sequential(*layers)
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(arch: str, in_channels: int = 1, outputs: int = 1) -> nn.Module:
    """``fcn`` (in_channels 1: the map; 2: map + fitted-model density; outputs 1: mean log10 RMSF; 2: mean and
    log-variance, trained with a Gaussian NLL) or DEFMap's ``reference`` net (1 channel, 1 output)."""
    if arch == "fcn":
        return DEFMapFCN(in_channels=in_channels, outputs=outputs)
    if in_channels != 1 or outputs != 1:
        raise ValueError("the reference network takes one channel and has one output")
    if arch == "reference":
        return DEFMapNet()
    raise ValueError(f"unknown arch {arch!r} (fcn or reference)")


def flops_per_patch(model: nn.Module, box: int = 10) -> float:
    """Multiply-adds x 2 for one 10³ patch evaluated on its own."""
    total, hooks = 0, []

    def conv_hook(m, i, o):
        nonlocal total
        total += 2 * o.numel() * m.in_channels * int(torch.tensor(m.kernel_size).prod())

    def lin_hook(m, i, o):
        nonlocal total
        total += 2 * m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, getattr(model, "in_channels", 1), box, box, box))
    for h in hooks:
        h.remove()
    return float(total)
