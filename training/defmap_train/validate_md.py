"""Real-MD yardstick: ``defmap-train validate-md`` on the md_reference chains (never trained on).

For each of the 17 chains with real MD RMSF (5 ATLAS 300 K, 12 mdCATH 320 K; ``../shared/data/md_reference``) maps are
simulated from the chain's own MD:

* ``hard``: Debye–Waller maps from the published per-residue C-alpha RMSF with the training randomization (local
  resolution, damage, coloured noise, B-factor, masking); the fitted model is the MD start structure;
* ``clean``: the same without confounders;
* ``frames`` (the 6 chains with MD snapshots): the mean density of the frames (hard confounders), with the fitted model
  at the frames' mean positions, as a user's model fitted into the map would sit.  Five chains have one real point per
  residue per frame (see the md_reference README), so their frames move each residue rigidly.

Per map and chain, Pearson r per residue with log10 MD RMSF of: raw intensity (minus the map value), ANM of the fitted
model (structure only), the map-only model (voxel mode's kind), the map + model model (structure mode's two-channel
kind, when one is given: the network combined with the density contrast at the weight fitted on the simulated CV,
as structure mode reports it; the network alone beside it), the combination the bundle uses with
``normalModes true`` (z-score sum of the map prediction and ANM), and, for models with a variance output,
Spearman(SD, |error|) with the error taken after a per-chain linear fit of MD on the prediction.  The residue value
is the mean over ``--residue-atoms`` (heavy, backbone or ca) of the per-atom predictions; the map-only model is also
reported with all three.

Nothing here is fitted to these chains.  Maps are cached in ``training/data/validate_md`` (seeded; delete to remake).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from chimerax.defmap import preprocess as pp
from chimerax.defmap.combination import combine, combine_terms, zscore
from chimerax.defmap.map_shape import RESIDUE_VOLUME, map_packing
from chimerax.defmap.network import calibrated_sd
from chimerax.defmap.nma import anm_log_fluctuations, map_elastic_network

from .ensembles import _record
from .maps import CLEAN, Randomization, simulate_map
from .paths import DEFAULT_DATA, REPO, SHARED, seed_of
from .structure import Structure, load_structure

MD_DIR = SHARED / "md_reference"
CACHE = DEFAULT_DATA / "validate_md"
VARIANTS = ("hard", "clean", "frames")
BACKBONE = {"N", "CA", "C", "O"}
ATLAS = {"1ab1_A", "1ail_A", "1bgf_A", "1b8d_K", "1ah7_A"}


# ------------------------------------------------------------------ chains and maps

def md_chains(md_dir: Path = MD_DIR) -> list[str]:
    return sorted(p.name.split(".")[0] for p in Path(md_dir).glob("*.rmsf_nm.txt"))


def load_chain(md_dir: Path, name: str) -> tuple[Structure, np.ndarray]:
    """(structure, per-residue MD C-alpha RMSF in Å)."""
    st = load_structure(Path(md_dir) / f"{name}.pdb", name)
    txt = (Path(md_dir) / f"{name}.rmsf_nm.txt").read_text().replace("\n", ",")
    md = np.array([float(x) for x in txt.split(",") if x.strip()]) * 10.0
    if len(md) != st.n_res:
        raise ValueError(f"{name}: {len(md)} RMSF values but {st.n_res} residues")
    return st, md


def frame_displacements(st: Structure, frames_dir: Path) -> np.ndarray | None:
    """(F, N, 3) displacements of the structure's atoms in each MD frame, matched by (residue order, atom name); atoms
    a frame lacks (five chains keep one point per residue) move with their residue's matched atoms."""
    from .structure import load_structure as _load
    files = sorted(Path(frames_dir).glob("*.pdb")) if Path(frames_dir).is_dir() else []
    if not files:
        return None
    out = []
    for f in files:
        fr = _load(f)
        if fr.n_res != st.n_res:
            raise ValueError(f"{f.name}: {fr.n_res} residues, {st.name} has {st.n_res}")
        pos = {(int(r), str(a)): x for r, a, x in zip(fr.res_index, fr.atom_name, fr.xyz)}
        disp = np.full(st.xyz.shape, np.nan)
        for i, (r, a) in enumerate(zip(st.res_index, st.atom_name)):
            x = pos.get((int(r), str(a)))
            if x is not None:
                disp[i] = x - st.xyz[i]
        # residues whose atoms are missing in the frame: the residue's one real point (N, or CAY of a cap)
        for r in range(st.n_res):
            sel = st.res_index == r
            have = np.isfinite(disp[sel, 0])
            if have.all():
                continue
            if have.any():
                fill = disp[sel][have].mean(axis=0)
            else:
                pts = fr.xyz[fr.res_index == r]
                ref = st.xyz[sel]
                fill = pts.mean(axis=0) - ref[np.isin(st.atom_name[sel], ["N", "CAY"])].mean(axis=0) \
                    if np.isin(st.atom_name[sel], ["N", "CAY"]).any() else pts.mean(axis=0) - ref.mean(axis=0)
            d = disp[sel]
            d[~have] = fill
            disp[sel] = d
        out.append(disp)
    return np.stack(out)


def chain_records(md_dir: Path, name: str) -> dict[str, dict]:
    """variant -> ensemble record (xyz = the fitted model the map comes with)."""
    st, md = load_chain(md_dir, name)
    recs = {"hard": _record(st, md[st.res_index], None, "md_residue_table")}
    recs["clean"] = recs["hard"]
    disp = frame_displacements(st, Path(md_dir) / "frames" / name)
    if disp is not None:
        mean = disp.mean(axis=0)
        st_mean = Structure(st.name, st.xyz + mean, st.element, st.atom_name, st.res_index, st.res_name,
                            st.res_label, st.chain_of_res, st.bfactor)
        recs["frames"] = _record(st_mean, md[st.res_index], disp - mean[None], "md_frames")
    return recs


def cached_maps(md_dir: Path, name: str, maps_per_variant: int, cache: Path = CACHE) -> list[dict]:
    """Simulated maps of one chain (values, origin, voxel size, resolution, fitted-model xyz, variant)."""
    cache.mkdir(parents=True, exist_ok=True)
    recs = None
    out = []
    for variant in VARIANTS:
        for k in range(maps_per_variant):
            f = cache / f"{name}__{variant}{k}.npz"
            if not f.exists():
                recs = recs or chain_records(md_dir, name)
                if variant not in recs:
                    continue
                rec = recs[variant]
                rng = np.random.default_rng(seed_of("validate-md", name, variant, k))
                sim = simulate_map(rec, rng, CLEAN if variant == "clean" else Randomization())
                np.savez(f, values=sim.values, origin=sim.origin, voxel_size=sim.voxel_size,
                         resolution=sim.resolution, xyz=rec["xyz"], params=json.dumps(sim.params))
            with np.load(f) as z:
                out.append({"variant": variant, "k": k, **{key: z[key] for key in z.files}})
    return out


# ------------------------------------------------------------------ models

class OnnxModel:
    """An exported DEFMap model run with onnxruntime: old single-channel files and the new ones whose metadata lists
    ``input_channels`` and ``outputs`` (mean and log-variance)."""

    def __init__(self, path: Path):
        import onnxruntime as ort
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.spec = pp.FeatureSpec.from_dict(self.meta["features"])
        self.channels = list(self.meta.get("input_channels") or [pp.MAP_CHANNEL])
        self.outputs = list(self.meta.get("outputs") or [self.meta.get("output", "log10_rmsf_angstrom")])
        self.fcn = bool(self.meta.get("fully_convolutional"))
        self.calibration = dict(self.meta.get("calibration") or {})
        opt = ort.SessionOptions()
        opt.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(self.path), opt, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.last_contrast: np.ndarray | None = None  # set by predict
        self.last_native: np.ndarray | None = None
        self.last_map_anm: np.ndarray | None = None
        self.last_packing: np.ndarray | None = None

    @property
    def resolution(self) -> float:
        return self.spec.filter_resolution

    @property
    def kind(self) -> str:
        return "map+model" if pp.MODEL_CHANNEL in self.channels else "map"

    def calibrated_sd(self, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """The SD the bundle reports (``recipe.predict_atoms``): head SD x ``sd_scale`` x exp(``sd_slope`` x the
        prediction's z-score over the atoms)."""
        return calibrated_sd(sd, mean, self.calibration)

    def reported_values(self, residue_pred: np.ndarray, per_res) -> np.ndarray:
        """Residue values as the bundle reports them by default: structure mode's (``recipe.predict_atoms``), the
        network's combined with the last prediction's density contrast at ``calibration.contrast_weight`` and its
        contrast at the map's own resolution at ``calibration.native_contrast_weight``; voxel mode's
        (``recipe.predict_voxels``), the network's combined with the map's packing at
        ``calibration.map_packing_weight`` (unchanged without them)."""
        terms = [(per_res(v), float(self.calibration.get(key, 0.0)))
                 for v, key in ((self.last_contrast, "contrast_weight"), (self.last_native, "native_contrast_weight"),
                                (self.last_packing, "map_packing_weight"))
                 if v is not None and float(self.calibration.get(key, 0.0)) > 0]
        return combine_terms(residue_pred, terms) if terms else residue_pred

    def predict(self, values, x2i, xyz, elements, map_resolution,
                n_residues: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-atom (mean log10 RMSF, the head's raw SD or None).  ``n_residues`` sets the volume a user's contour
        would enclose (``map_shape.RESIDUE_VOLUME`` each) for what voxel mode reads from the map's own shape (map-only
        kind): its packing (``last_packing``) and the normal modes of its pseudo-atoms that ``normalModes true`` adds
        (``last_map_anm``)."""
        prep = pp.prepare_points(values, x2i, xyz, self.spec, map_resolution=map_resolution)
        x = pp.stack_channels(prep, self.channels, xyz, pp.element_weights(elements), self.spec)
        y = dense_run(self.session, self.input, x, prep.centers, self.spec.box)
        mean = np.full(len(xyz), np.nan, dtype=np.float32)
        ok = prep.point_to_center >= 0
        mean[ok] = y[0][prep.point_to_center[ok]]
        self.last_contrast = None  # per atom, two-channel models: what structure mode combines with the network
        self.last_native = self.last_map_anm = self.last_packing = None
        if self.kind == "map" and n_residues:
            n_vox = int(round(n_residues * RESIDUE_VOLUME / self.spec.voxel_size ** 3))
            fl = map_elastic_network(prep.grid.values, n_vox, self.spec.voxel_size, prep.centers)
            self.last_map_anm = np.full(len(xyz), np.nan)
            self.last_map_anm[ok] = fl[prep.point_to_center[ok]]
            pk = map_packing(prep.grid.values, n_vox, self.spec.voxel_size, prep.centers)
            self.last_packing = np.full(len(xyz), np.nan)
            self.last_packing[ok] = pk[prep.point_to_center[ok]]
        if float(self.calibration.get("native_contrast_weight", 0.0)) > 0 or self.kind == "map+model":
            rigid = pp.rigid_density_at(xyz, pp.element_weights(elements), map_resolution or self.resolution)
            self.last_native = pp.native_contrast(pp.map_values_at(values, x2i, xyz), rigid)
        if self.kind == "map+model":
            self.last_contrast = np.full(len(xyz), np.nan)
            self.last_contrast[ok] = pp.density_contrast(x[self.channels.index(pp.MAP_CHANNEL)],
                                                         x[self.channels.index(pp.MODEL_CHANNEL)],
                                                         prep.centers)[prep.point_to_center[ok]]
        sd = None
        if y.shape[0] > 1:
            sd = np.full(len(xyz), np.nan, dtype=np.float32)
            sd[ok] = np.exp(0.5 * y[1][prep.point_to_center[ok]])
        return mean, sd


def read_meta(path: Path) -> dict:
    """The DEFMap metadata JSON, read by onnxruntime as the bundle reads it."""
    from chimerax.defmap.network import read_metadata
    return json.loads(read_metadata(Path(path))["defmap"])


def dense_run(session, input_name: str, x: np.ndarray, centers: np.ndarray, box: int, tile: int = 32) -> np.ndarray:
    """(K outputs, M centres) from tiles of a (C, z, y, x) lattice (output voxel o = the patch starting at o)."""
    starts = np.asarray(centers) - box // 2
    tile_of = starts // tile
    keys, inv = np.unique(tile_of, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    out = None
    for t, key in enumerate(keys):
        t0 = key * tile
        sub = x[:, t0[0]:t0[0] + tile + box - 1, t0[1]:t0[1] + tile + box - 1, t0[2]:t0[2] + tile + box - 1]
        y = session.run(None, {input_name: np.ascontiguousarray(sub[None])})[0][0]
        if out is None:
            out = np.empty((y.shape[0], len(starts)), dtype=np.float32)
        sel = np.flatnonzero(inv == t)
        rel = starts[sel] - t0
        out[:, sel] = y[:, rel[:, 0], rel[:, 1], rel[:, 2]]
    return out


def choose(models: list[OnnxModel], resolution: float) -> OnnxModel | None:
    """As the bundle: the sharpest model at or coarser than the map's resolution (else the coarsest)."""
    if not models:
        return None
    ms = sorted(models, key=lambda m: m.resolution)
    ok = [m for m in ms if m.resolution >= resolution - 1e-6]
    return ok[0] if ok else ms[-1]


def load_models(dirs: list[Path]) -> dict[str, list[OnnxModel]]:
    out: dict[str, list[OnnxModel]] = {"map": [], "map+model": []}
    for d in dirs:
        for p in sorted(Path(d).glob("*.onnx")):
            m = OnnxModel(p)
            out[m.kind].append(m)
    return out


# ------------------------------------------------------------------ metrics

def residue_values(values: np.ndarray, st_res_index: np.ndarray, atom_name: np.ndarray, n_res: int,
                   atoms: str = "heavy") -> np.ndarray:
    """Per-residue mean of per-atom values over 'heavy' atoms, the 'backbone' (N, CA, C, O) or the 'ca' only."""
    v = np.asarray(values, dtype=np.float64)
    sel = np.isfinite(v)
    if atoms == "backbone":
        sel &= np.isin(atom_name, list(BACKBONE))
    elif atoms == "ca":
        sel &= atom_name == "CA"
    elif atoms != "heavy":
        raise ValueError(f"residue atoms must be ca, backbone or heavy, not {atoms!r}")
    s = np.bincount(st_res_index[sel], v[sel], minlength=n_res)
    c = np.bincount(st_res_index[sel], minlength=n_res)
    with np.errstate(invalid="ignore"):
        return s / np.where(c > 0, c, np.nan)


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def line_errors(pred: np.ndarray, truth: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The errors the SD should rank, at the ``ok`` entries: truth minus the least-squares line of truth on the
    prediction (MD and the training labels differ in scale)."""
    a, b = np.polyfit(pred[ok], truth[ok], 1)
    return truth[ok] - (a * pred[ok] + b)


def sd_error_spearman(pred: np.ndarray, sd: np.ndarray, truth: np.ndarray) -> float:
    """Spearman(SD, |error|) with error = truth minus the per-chain least-squares line of truth on the prediction."""
    ok = np.isfinite(pred) & np.isfinite(sd) & np.isfinite(truth)
    if ok.sum() < 5:
        return float("nan")
    return float(stats.spearmanr(sd[ok], np.abs(line_errors(pred, truth, ok))).statistic)


def evaluate_chain(md_dir: Path, name: str, models: dict[str, list[OnnxModel]], maps_per_variant: int,
                   residue_atoms: str) -> dict:
    st, md = load_chain(md_dir, name)
    truth = np.log10(md)
    rows: dict[str, list[dict]] = {}
    anm_cache: dict[bytes, np.ndarray] = {}
    for m in cached_maps(md_dir, name, maps_per_variant):
        xyz = np.asarray(m["xyz"], dtype=np.float64)
        vs, res = float(m["voxel_size"]), float(m["resolution"])
        x2i, _ = pp.grid_transforms(m["origin"], (vs,) * 3)
        values = np.asarray(m["values"], dtype=np.float32)

        def per_res(v, atoms=residue_atoms):
            return residue_values(v, st.res_index, st.atom_name, st.n_res, atoms)

        key = xyz.tobytes()
        if key not in anm_cache:
            anm_cache[key] = anm_log_fluctuations(xyz[st.ca_index()])
        anm = anm_cache[key]
        from .dataset import map_baselines
        raw = per_res(map_baselines(values, x2i, xyz, vs)["raw_intensity"])
        row = {"resolution": res, "raw": pearson(raw, truth), "anm": pearson(anm, truth)}
        kind_pred: dict[str, np.ndarray] = {}
        for kind, ms in models.items():
            mod = choose(ms, res)
            if mod is None:
                continue
            mean, sd = mod.predict(values, x2i, xyz, st.element, res, st.n_res)
            net = per_res(mean)
            pr = mod.reported_values(net, per_res)
            if mod.last_contrast is not None:
                row["contrast"] = pearson(per_res(mod.last_contrast), truth)  # the one voxel alone, a diagnostic
                row["native"] = pearson(per_res(mod.last_native), truth)  # and the contrast at the map's resolution
            if mod.last_map_anm is not None:  # voxel mode's normalModes: the map's own elastic network
                man = per_res(mod.last_map_anm)
                row["map_anm"] = pearson(man, truth)
                pak, cal = per_res(mod.last_packing), mod.calibration
                row["map_packing"] = pearson(pak, truth)
                row["map+map_anm"] = pearson(combine_terms(net, [(pak, float(cal.get("map_packing_weight", 0.0))),
                                                                 (man, float(cal.get("map_anm_weight", 1.0)))]), truth)
            if pr is not net:  # the contrast was combined: the network alone beside it
                row[f"{kind}_network"] = pearson(net, truth)
            kind_pred[kind] = pr
            row[kind] = pearson(pr, truth)
            row[f"{kind}_model"] = mod.path.name
            row[f"{kind}+anm_zsum"] = pearson(combine(pr, anm), truth)
            if "anm_weight" in mod.calibration:  # the weight fitted on the simulated CV, never on these chains
                w = float(mod.calibration["anm_weight"])
                row[f"{kind}+anm_fitted"] = pearson(zscore(pr) + w * zscore(anm), truth)
            if kind == "map":
                for atoms in ("ca", "backbone", "heavy"):
                    row[f"map_{atoms}"] = pearson(per_res(mean, atoms), truth)
            if sd is not None:
                row[f"{kind}_sd_spearman"] = sd_error_spearman(pr, per_res(mod.calibrated_sd(mean, sd)), truth)
                row[f"_fit_{kind}"] = (mean, sd, per_res, truth, pr)  # for fit_sd_slope
            # a diagnostic for the SD: does the predicted value itself (more flexible = less sure) rank the errors?
            row[f"{kind}_value_spearman"] = sd_error_spearman(pr, pr, truth)
        if len(kind_pred) == 2:  # do the two kinds' disagreement rank the map + model errors? (a diagnostic)
            row["pair_sd_spearman"] = sd_error_spearman(kind_pred["map+model"],
                                                        np.abs(kind_pred["map+model"] - kind_pred["map"]), truth)
        rows.setdefault(m["variant"].item() if hasattr(m["variant"], "item") else m["variant"], []).append(row)
    out = {"chain": name, "source": "ATLAS 300 K" if name in ATLAS else "mdCATH 320 K", "residues": st.n_res,
           "variants": {}}
    for v, rs in rows.items():
        keys = [k for k in rs[0] if not k.endswith("_model") and not k.startswith("_")]
        out.setdefault("_fit", []).extend((v, k[5:], r[k]) for r in rs for k in r if k.startswith("_fit_"))
        out["variants"][v] = {k: float(np.nanmean([r.get(k, np.nan) for r in rs])) for k in keys}
        out["variants"][v]["maps"] = len(rs)
        out["variants"][v]["models"] = sorted({r[k] for r in rs for k in r if k.endswith("_model")})
    return out


SLOPES = np.round(np.arange(-1.0, 2.01, 0.05), 2)
POWERS = (0.0, 0.25, 0.5, 0.75, 1.0)  # of the head's SD: 0 ignores the head, 1 takes it as it is


def sloped_sd(mean: np.ndarray, sd: np.ndarray, b: float, power: float = 1.0) -> np.ndarray:
    """Per-atom head SD with ``sd_slope`` b, ``sd_power`` and no scale (the bundle's ``model.calibrated_sd``)."""
    return calibrated_sd(sd, mean, {"sd_slope": b, "sd_power": power})


def _slope_nll(fit, b: float, power: float = 1.0) -> float:
    """Gaussian NLL of one map's residue errors at slope b and power, the map's own scale profiled out: per residue,
    SD = residue mean of ``sloped_sd``, error = MD minus the map's least-squares line on the prediction."""
    mean, sd, per_res, truth = fit[:4]
    pr, s = _reported(fit), per_res(sloped_sd(mean, sd, b, power))
    ok = np.isfinite(pr) & np.isfinite(s) & np.isfinite(truth) & (s > 0)
    e2 = line_errors(pr, truth, ok) ** 2
    return float(np.log(s[ok]).sum() + 0.5 * ok.sum() * np.log(np.mean(e2 / s[ok] ** 2)))


GRID = [(float(b), p) for p in POWERS for b in SLOPES]


def _reported(fit: tuple) -> np.ndarray:
    """The residue values whose errors the SD is judged on: what structure mode reports (network and contrasts),
    else the network's own residue means."""
    return fit[4] if len(fit) > 4 else fit[2](fit[0])


def _nll_table(fits: list[tuple[str, str, tuple]]) -> np.ndarray:
    """(maps, GRID) NLL of each map at each (slope, power)."""
    return np.array([[_slope_nll(f, b, p) for b, p in GRID] for _, _, f in fits]).reshape(len(fits), len(GRID))


def _best(table: np.ndarray) -> tuple[float, float]:
    """The (slope, power) of GRID with the smallest NLL summed over the table's maps."""
    return GRID[int(np.argmin(table.sum(axis=0)))]


def fit_sd_slope(fits: list[tuple[str, str, tuple]]) -> tuple[float, float]:
    """(slope b, power p) of SD = head SD^p x exp(b x the prediction's z-score) that maximize the Gaussian likelihood
    of the errors of these maps (each map's scale free): flexible residues are predicted less surely against MD, which
    the variance head (trained on simulated labels) does not know, and the head itself is only partly right there."""
    return _best(_nll_table(fits))


def sd_slope_report(chains: list[dict]) -> dict:
    """Per model kind: (b, p) fitted on all chains (what the shipped calibration takes) and the leave-one-chain-out
    Spearman(SD, abs error) per kind of map, (b, p) fitted on the other chains each time (the honest estimate)."""
    out = {}
    kinds = sorted({k for c in chains for _, k, _ in c.get("_fit", [])})
    for kind in kinds:
        fits = [(c["chain"], v, f) for c in chains for v, k, f in c.get("_fit", []) if k == kind]
        table = _nll_table([(v, kind, f) for _, v, f in fits])
        names = [n for n, _, _ in fits]
        loo: dict[str, list[float]] = {}
        for name in dict.fromkeys(names):
            rest = np.array([n != name for n in names])
            b, pw = _best(table[rest])
            by_variant: dict[str, list[float]] = {}
            for n, v, fit in fits:
                if n == name:
                    mean, sd, per_res, truth = fit[:4]
                    by_variant.setdefault(v, []).append(
                        sd_error_spearman(_reported(fit), per_res(sloped_sd(mean, sd, b, pw)), truth))
            for v, xs in by_variant.items():
                loo.setdefault(v, []).append(float(np.nanmean(xs)))
        b, pw = _best(table)
        out[kind] = {"sd_slope": b, "sd_power": pw,
                     "fitted_on": f"all {len(set(names))} md_reference chains, all their maps",
                     "loo_spearman": {v: float(np.nanmean(xs)) for v, xs in loo.items()}}
    return out


COLUMNS = [("raw", "raw intensity"), ("contrast", "density contrast alone"),
           ("native", "contrast at map resolution alone"), ("anm", "ANM (fitted model)"),
           ("map_packing", "packing of the map alone"), ("map_network", "map-only network alone"),
           ("map", "map-only (voxel mode)"), ("map_anm", "ANM of the map's pseudo-atoms alone"),
           ("map+map_anm", "map-only ⊕ ANM of the map (voxel mode normalModes)"),
           ("map+model_network", "map + model network alone"),
           ("map+model", "map + model (structure mode)"), ("map+anm_zsum", "map-only ⊕ ANM (z-sum)"),
           ("map+model+anm_zsum", "map+model ⊕ ANM (z-sum)"),
           ("map+model+anm_fitted", "map+model ⊕ w·ANM (w from CV)"),
           ("map+model_sd_spearman", "Spearman(SD, abs err)"),
           ("map_sd_spearman", "Spearman(SD, abs err) map-only"),
           ("pair_sd_spearman", "Spearman(abs(map+model − map-only), abs err)"),
           ("map+model_value_spearman", "Spearman(map+model prediction, abs err)")]
ATOM_COLUMNS = [("map_ca", "C-alpha"), ("map_backbone", "backbone"), ("map_heavy", "heavy atoms")]


def markdown(result: dict) -> str:
    chains = result["chains"]
    lines = [f"Command: `{result['command']}`", "",
             f"Models: {', '.join(result['models']) or 'none'}; residue value = mean over "
             f"{result['residue_atoms']} atoms; {result['maps_per_variant']} map(s) per chain and variant; "
             "per-residue Pearson r with log10 MD RMSF, mean over a chain's maps.", ""]
    for v in VARIANTS:
        have = [c for c in chains if v in c["variants"]]
        if not have:
            continue
        cols = [(k, t) for k, t in COLUMNS if any(np.isfinite(c["variants"][v].get(k, np.nan)) for c in have)]
        lines += [f"### {v} maps ({len(have)} chains)", "",
                  "| chain | source | residues | " + " | ".join(t for _, t in cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for c in have:
            d = c["variants"][v]
            lines.append(f"| {c['chain']} | {c['source']} | {c['residues']} | "
                         + " | ".join(_f(d.get(k)) for k, _ in cols) + " |")
        s = result["summary"][v]
        lines.append("| **mean** | | | " + " | ".join(f"**{_f(s.get(k))}**" for k, _ in cols) + " |")
        lines.append("")
    lines += targets(result["summary"], result.get("sd_slope"))
    lines += sd_slope_lines(result.get("sd_slope") or {})
    lines += ["### Residue value: which atoms (map-only model, mean r over chains)", "",
              "| maps | " + " | ".join(t for _, t in ATOM_COLUMNS) + " |", "|---|" + "---|" * len(ATOM_COLUMNS)]
    for v in VARIANTS:
        if v in result["summary"]:
            s = result["summary"][v]
            lines.append(f"| {v} | " + " | ".join(_f(s.get(k)) for k, _ in ATOM_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def sd_slope_lines(slopes: dict) -> list[str]:
    """The SD calibration fitted on these chains, and its leave-one-chain-out Spearman(SD, abs error)."""
    if not slopes:
        return []
    out = ["### SD calibration on real MD (SD = head SD^p x exp(b x z-score of the prediction), by likelihood)", "",
           "| model kind | b (sd_slope) fitted on all chains | p (sd_power) | "
           + " | ".join(f"leave-one-chain-out Spearman, {v}" for v in VARIANTS) + " |",
           "|---|---|---|" + "---|" * len(VARIANTS)]
    for kind, d in slopes.items():
        out.append(f"| {kind} | {d['sd_slope']:g} | {d.get('sd_power', 1.0):g} | "
                   + " | ".join(_f(d["loo_spearman"].get(v)) for v in VARIANTS) + " |")
    return out + [""]


def targets(summary: dict, slopes: dict | None = None) -> list[str]:
    """The targets the shipped models are held to, each with the measured numbers (mean per-residue r over the
    chains); the SD's Spearman is the leave-one-chain-out one when the SD slope was fitted on these chains."""
    def g(v, k):
        return summary.get(v, {}).get(k, float("nan"))
    rows = [("hard: map + model ≥ ANM + 0.05", g("hard", "map+model"), g("hard", "anm") + 0.05),
            ("frames: map + model ≥ ANM + 0.05", g("frames", "map+model"), g("frames", "anm") + 0.05),
            ("clean: map + model ≥ raw intensity", g("clean", "map+model"), g("clean", "raw")),
            ("hard: map + model ≥ raw intensity + 0.15", g("hard", "map+model"), g("hard", "raw") + 0.15),
            ("hard: map-only ≥ raw intensity + 0.15", g("hard", "map"), g("hard", "raw") + 0.15)]
    loo = ((slopes or {}).get("map+model") or {}).get("loo_spearman")
    sp = [loo.get(v, np.nan) if loo else g(v, "map+model_sd_spearman") for v in VARIANTS if v in summary]
    sp = [x for x in sp if np.isfinite(x)]
    rows.append(("Spearman(SD, abs error) ≥ 0.3 (mean over map kinds" + (", leave-one-chain-out)" if loo else ")"),
                 float(np.mean(sp)) if sp else float("nan"), 0.3))
    out = ["### Targets", "", "| target | measured | needed | met |", "|---|---|---|---|"]
    for name, got, need in rows:
        met = "–" if not (np.isfinite(got) and np.isfinite(need)) else ("yes" if got >= need else "no")
        out.append(f"| {name} | {_f(got)} | {_f(need)} | {met} |")
    return out + [""]


DOC_BEGIN, DOC_END = "<!-- validate-md:begin -->", "<!-- validate-md:end -->"
DOC_COLUMNS = [("raw", "raw intensity"), ("anm", "ANM of the fitted model"), ("map_network", "map-only network alone"),
               ("map", "map-only (voxel mode)"),
               ("map+map_anm", "voxel mode with normalModes (ANM of the map)"),
               ("map+model_network", "map + model network alone"),
               ("map+model", "map + model (structure mode)"), ("map+model+anm_fitted", "map + model ⊕ w·ANM"),
               ("map+model_sd_spearman", "Spearman(SD, abs error), slope and power fitted on these chains")]


def docs_block(result: dict, train_jsons: list[Path]) -> str:
    """The summary docs/validation.md and MODEL_CARD carry between the validate-md markers: mean r per kind of map,
    the targets, and beside them how much of the training labels the structure alone explains (ANM vs label r on
    the simulated protein-disjoint CV, from the train run's JSON)."""
    s = result["summary"]
    lines = [DOC_BEGIN, "", f"Generated from the repository root by `.venv/bin/{result['command']} --docs ...`; "
             "do not edit by hand. Mean per-residue Pearson r with log10 MD C-alpha RMSF over the md_reference chains "
             "(never trained on; only the SD's slope and power are fitted to them, and the honest estimate is the "
             f"leave-one-chain-out one below), {result['maps_per_variant']} maps per chain; residue = mean over "
             f"{result['residue_atoms']} atoms. Models: {', '.join(Path(m).name for m in result['models'])}.", "",
             "| maps (chains) | " + " | ".join(t for _, t in DOC_COLUMNS) + " |", "|---|" + "---|" * len(DOC_COLUMNS)]
    label = {"hard": "hard: Debye–Waller from MD RMSF + training confounders", "clean": "clean: same, no confounders",
             "frames": "frames: mean density of MD snapshots, model at their mean"}
    for v in VARIANTS:
        if v in s:
            lines.append(f"| {label[v]} ({s[v]['chains']}) | " + " | ".join(_f(s[v].get(k)) for k, _ in DOC_COLUMNS)
                         + " |")
    lines += [""] + targets(s, result.get("sd_slope"))[2:-1] + [""] + sd_slope_lines(result.get("sd_slope") or {})[2:]
    for p in train_jsons:
        d = json.loads(Path(p).read_text(encoding="utf-8"))
        for kind, k in d.get("kinds", {}).items():
            cv = k.get("cv") or {}
            if "anm_r" in cv:
                lines.append(f"Training set ({_rel(p)}, {kind}, protein-disjoint CV on "
                             f"{cv['proteins']} simulated proteins): network residue r {_f(cv['residue_r'])}"
                             + (f", with the density contrast (c = {cv['contrast_weight']:g}, fitted on that CV) "
                                f"{_f(cv['residue_r_with_contrast'])}"
                                if cv.get("contrast_weight") and not cv.get("native_contrast_weight") else "")
                             + (f", with the density contrasts (c = {cv.get('contrast_weight', 0.0):g} on the "
                                f"network's lattice, n = {cv['native_contrast_weight']:g} at the map's resolution, "
                                f"fitted together on that CV) {_f(cv['residue_r_with_contrast'])}"
                                if cv.get("native_contrast_weight") else "")
                             + (f", with the map's packing (voxel mode, weight {cv['map_packing_weight']:g} fitted on "
                                f"that CV) {_f(cv['residue_r_with_packing'])}"
                                if cv.get("map_packing_weight") and "residue_r_with_packing" in cv else "")
                             + (f", and with normal modes of the map's pseudo-atoms (voxel mode's normalModes, weight "
                                f"{cv['map_anm_weight']:g} fitted on that CV) {_f(cv['residue_r_with_map_anm'])}"
                                if cv.get("map_anm_weight") and "residue_r_with_map_anm" in cv else "")
                             + ", ANM of "
                             f"the structure vs the same labels {_f(cv['anm_r'])}; 68 % coverage "
                             f"{_f(cv['coverage68_calibrated'])} after sd_scale {cv['sd_scale']:.2f}; "
                             f"w = {cv['anm_weight']:g} (fitted on that CV).")
    return "\n".join(lines + ["", DOC_END])


def update_docs(paths: list[Path], block: str) -> None:
    """Replace the text between the validate-md markers of each file (the markers must be there)."""
    for p in paths:
        text = Path(p).read_text(encoding="utf-8")
        if DOC_BEGIN not in text or DOC_END not in text:
            raise SystemExit(f"{p} has no {DOC_BEGIN} ... {DOC_END} block")
        head, rest = text.split(DOC_BEGIN, 1)
        Path(p).write_text(head + block + rest.split(DOC_END, 1)[1], encoding="utf-8")


def _f(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3f}"


def run(a) -> dict:
    t0 = time.time()
    md_dir = Path(a.md_reference)
    dirs = [Path(d) for d in a.models]
    models = load_models(dirs)
    chains = [c for c in md_chains(md_dir) if not a.chains or c in a.chains.split(",")]
    res = []
    for c in chains:
        r = evaluate_chain(md_dir, c, models, a.maps_per_variant, a.residue_atoms)
        res.append(r)
        print(f"{c}: " + "; ".join(f"{v} " + ", ".join(f"{k} {d[k]:.3f}" for k, _ in COLUMNS
                                                         if np.isfinite(d.get(k, np.nan)))
                                  for v, d in r["variants"].items()), flush=True)
    summary = {}
    for v in VARIANTS:
        ds = [c["variants"][v] for c in res if v in c["variants"]]
        if ds:
            keys = sorted({k for d in ds for k in d if k not in ("maps", "models")})
            summary[v] = {k: float(np.nanmean([d.get(k, np.nan) for d in ds])) for k in keys}
            summary[v]["chains"] = len(ds)
    slopes = sd_slope_report(res)
    for c in res:  # per-atom arrays: not for the JSON
        c.pop("_fit", None)
    cmd = "defmap-train validate-md " + " ".join(
        [f"--models {' '.join(_rel(d) for d in dirs)}", f"--maps-per-variant {a.maps_per_variant}",
         f"--residue-atoms {a.residue_atoms}"] + ([f"--chains {a.chains}"] if a.chains else []))
    result = {"command": cmd, "models": [_rel(m.path) for ms in models.values() for m in ms],
              "residue_atoms": a.residue_atoms, "maps_per_variant": a.maps_per_variant, "chains": res,
              "summary": summary, "sd_slope": slopes, "seconds": round(time.time() - t0, 1)}
    text = markdown(result)
    print(text)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text("# validate-md (generated by `defmap-train validate-md`; do not edit)\n\n"
                                          + text, encoding="utf-8")
    if getattr(a, "docs", None):
        update_docs([Path(p) for p in a.docs], docs_block(result, [Path(p) for p in a.train_json or []]))
    return result


def _rel(p) -> str:
    """A path as typed from the repository root (the command lines in reports and docs are run from there)."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)
