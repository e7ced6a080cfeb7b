"""Samples = (map, structure, labels) run through chimerax.defmap.preprocess, exactly as the bundle will at run time.

One sample file per (protein, map): for each filter resolution the preprocessed lattice (float16), the unique centre
voxels and the atom → centre index, plus the per-atom labels and two map-only baselines.  Labels per centre voxel are
the mean log10 RMSF (Å) of the heavy atoms rounded to it.  Also the protein-disjoint splits every evaluation uses:
a protein's maps are all on one side.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from chimerax.defmap import preprocess as pp

RESOLUTIONS = (5.0, 6.0, 7.0)


def spec_for(resolution: float) -> pp.FeatureSpec:
    return pp.FeatureSpec(voxel_size=1.5, box=10, filter_resolution=float(resolution),
                          normalization="support_zscore_clip")


def map_baselines(values: np.ndarray, xyz_to_ijk: np.ndarray, xyz: np.ndarray, vs: float) -> dict[str, np.ndarray]:
    """Per-atom map-only predictors of flexibility (sign: larger = predicted more flexible).

    raw_intensity: minus the map value at the atom (DEFMap's r ≈ 0.46 realism check);
    blur_proxy: minus the map value at the atom over the mean in a 4 Å ball, a local-sharpness (resolution) proxy.
    """
    m = np.asarray(xyz_to_ijk, dtype=np.float64).reshape(3, 4)
    ijk = xyz @ m[:, :3].T + m[:, 3]
    at = pp.map_values_at(values, xyz_to_ijk, xyz)
    r = max(1, int(round(4.0 / vs)))
    zz, yy, xx = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    ball = (zz ** 2 + yy ** 2 + xx ** 2 <= r * r).astype(np.float32)
    local = ndimage.convolve(values, ball / ball.sum(), mode="constant")
    loc = ndimage.map_coordinates(local, ijk[:, ::-1].T, order=1, mode="nearest")
    sd = max(float(values.std()), 1e-12)
    return {"raw_intensity": -at, "blur_proxy": -(at - loc) / sd}


LABEL_MD, LABEL_ENGINE = "ATLAS MD", "the ensemble engine"  # what a sample's labels are (a calibration says it)
LABEL_UNRECORDED = "labels not recorded (samples made before they said)"


def make_sample(values: np.ndarray, xyz_to_ijk: np.ndarray, vs: float, rec: dict, resolution: float | None,
                rng: np.random.Generator, resolutions=RESOLUTIONS, p_unknown_resolution: float = 0.2) -> dict:
    """Preprocess one map for every model resolution; map_resolution is withheld for a fraction of samples."""
    xyz = np.asarray(rec["xyz"], dtype=np.float64)
    label = rec.get("label_rmsf", rec["rmsf"])  # MD records: NaN where the MD has no value (no label there)
    out = {"name": str(rec["name"]), "log_rmsf": np.log10(np.maximum(label, 1e-3)).astype(np.float32),
           "res_index": np.asarray(rec["res_index"]), "resolution": float(resolution or np.nan),
           "label_source": LABEL_MD if "label_rmsf" in rec else LABEL_ENGINE}
    out.update({k: v.astype(np.float32) for k, v in map_baselines(values, xyz_to_ijk, xyz, vs).items()})
    known = resolution is not None and rng.random() >= p_unknown_resolution
    out["resolution_given"] = bool(known)
    for res in resolutions:
        prep = pp.prepare_points(values, xyz_to_ijk, xyz, spec_for(res), map_resolution=resolution if known else None)
        key = f"{res:g}"
        out[f"grid_{key}"] = prep.grid.values.astype(np.float16)
        out[f"centers_{key}"] = prep.centers.astype(np.int32)
        out[f"p2c_{key}"] = prep.point_to_center.astype(np.int32)
        # second input channel: the fitted model's own rigid density on the same lattice (the bundle's function)
        out[f"model_{key}"] = pp.model_density(prep, xyz, pp.element_weights(rec["element"]),
                                               spec_for(res)).astype(np.float16)
    return out


def center_labels(log_rmsf: np.ndarray, p2c: np.ndarray, n_centers: int) -> np.ndarray:
    ok = (p2c >= 0) & np.isfinite(log_rmsf)
    s = np.bincount(p2c[ok], log_rmsf[ok], minlength=n_centers)
    n = np.bincount(p2c[ok], minlength=n_centers)
    with np.errstate(invalid="ignore"):
        return (s / np.where(n > 0, n, np.nan)).astype(np.float32)


@dataclass
class Item:
    """One (protein, map) at one filter resolution, ready for training or evaluation."""

    protein: str
    grid: np.ndarray  # float32 [z,y,x] preprocessed lattice
    centers: np.ndarray  # (M, 3)
    labels: np.ndarray  # (M,) mean log10 RMSF per centre (NaN: no finite label)
    p2c: np.ndarray  # (N,)
    log_rmsf: np.ndarray  # (N,)
    res_index: np.ndarray  # (N,)
    baselines: dict
    path: str
    model_grid: np.ndarray | None = None  # float32 [z,y,x] fitted-model density channel (None in older samples)
    label_source: str = LABEL_UNRECORDED  # LABEL_MD or LABEL_ENGINE: what the labels come from

    def input(self, channels: int) -> np.ndarray:
        """(C, z, y, x): the map, and with 2 channels the fitted model's density."""
        if channels == 1:
            return self.grid[None]
        if self.model_grid is None:
            raise ValueError(f"{self.path} has no model-density channel; regenerate it with defmap-train dataset")
        return np.stack([self.grid, self.model_grid])


def load_item(path: Path, resolution: float) -> Item:
    with np.load(path, allow_pickle=False) as z:
        key = f"{resolution:g}"
        centers = z[f"centers_{key}"]
        p2c = z[f"p2c_{key}"]
        lr = z["log_rmsf"]
        return Item(str(z["name"]), z[f"grid_{key}"].astype(np.float32), centers,
                    center_labels(lr, p2c, len(centers)), p2c, lr, z["res_index"],
                    {k: z[k] for k in ("raw_intensity", "blur_proxy")}, str(path),
                    z[f"model_{key}"].astype(np.float32) if f"model_{key}" in z.files else None,
                    str(z["label_source"]) if "label_source" in z.files else LABEL_UNRECORDED)


def map_kind(path) -> str:
    """The kind of simulated map a sample file holds (PROTEIN__KINDn.npz: map = frame-averaged, dw = Debye-Waller,
    clean = Debye-Waller without confounders)."""
    return Path(path).stem.split("__")[1].rstrip("0123456789")


def list_samples(data_dir: Path) -> dict[str, list[Path]]:
    """Sample files grouped by protein (file names are PROTEIN__mapN.npz)."""
    out: dict[str, list[Path]] = {}
    for p in sorted(Path(data_dir).glob("*.npz")):
        out.setdefault(p.stem.split("__")[0], []).append(p)
    return out


def load_items(paths: list[Path], resolution: float) -> list[Item]:
    return [load_item(p, resolution) for p in paths]


def split_proteins(proteins: list[str], frac: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) proteins: a deterministic, protein-disjoint split."""
    ps = sorted(proteins, key=lambda p: zlib.crc32(f"{seed}/{p}".encode()))
    n_val = max(1, int(round(frac * len(ps)))) if len(ps) > 1 else 0
    return sorted(ps[n_val:]), sorted(ps[:n_val])


def folds_of(proteins: list[str], k: int) -> list[list[str]]:
    """k protein-disjoint test folds, the same for every run on the same proteins."""
    ps = sorted(proteins, key=lambda p: zlib.crc32(f"fold/{p}".encode()))
    return [sorted(ps[i::k]) for i in range(k)]
