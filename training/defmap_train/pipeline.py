"""The training recipe of the shipped models, ``defmap-train train``: per kind of network, a protein-disjoint CV, the
calibration fitted on it, a final model and its ONNX export.

Kinds: ``map`` (one input channel, what voxel mode uses) and ``map+model`` (the map and the fitted model's own density
from ``chimerax.defmap.preprocess.model_density``, what structure mode uses); both FCNs output a mean log10 RMSF and a
log-variance (beta-NLL, ``train.loss_terms``).  At one resolution, for each kind: k fold models, each never seeing its
test proteins (early stopping on a further protein-disjoint part), scored on their test maps
(``calibration.item_rows``) and summarized into the calibration (``calibration.summarize``); then a final model on all
proteins, exported with that calibration in its metadata.  6 and 7 Å fine-tune the 5 Å final model and take its
calibration (``--calibration-from``).  Checkpoints that exist are loaded, not retrained, so an interrupted run
resumes and a run whose checkpoints all exist (a soup, ``soup.py``) only calibrates and exports.
``training/reproduce.sh`` runs the shipped models' lineage with it.

Under torchrun every rank trains (``train.train`` is DistributedDataParallel); rank 0 alone writes checkpoints, the
ONNX files and the run's JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from .calibration import item_rows, summarize
from .dataset import LABEL_UNRECORDED, folds_of, list_samples, load_item, load_items, map_kind, split_proteins
from .export import export_onnx, load_checkpoint, save_checkpoint
from .paths import DEFAULT_DATA, write_json
from .train import init_distributed, is_main, train

KINDS = {"map": 1, "map+model": 2}  # kind -> input channels
VAL_FRACTION = 0.15  # of the training proteins, held out for early stopping
# A run's settings (the command line's options, `defmap-train train --help`); a variant of the recipe is a set of
# overrides, as training/reproduce.sh's stages are.
DEFAULTS = {"data": str(DEFAULT_DATA / "samples"), "ensembles": str(DEFAULT_DATA / "ensembles"),
            "kinds": "map+model,map", "resolution": 5.0, "folds": 3, "cv_minutes": 3.5, "minutes": 5.0,
            "max_steps": 100_000, "batch": 256, "eval_maps": 2, "eval_seconds": 60.0, "init_checkpoint": None,
            "init_cv": None, "calibration_from": None, "sd_slope": 0.0, "sd_power": 1.0, "map_kinds": "map,dw,clean",
            "fit_map_kinds": "map,dw,clean", "groups": 0, "seed": 0, "threads": None, "init_onnx": None,
            "lr": 1e-3}


def config(out: str | Path, **overrides) -> SimpleNamespace:
    """The settings of a run into ``out``: DEFAULTS with ``overrides``."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    return SimpleNamespace(**{**DEFAULTS, **overrides, "out": str(out)})


def run_json(out: Path, resolution: float) -> Path:
    """The record a run writes per resolution: its command, folds and, per kind, the CV summary and calibration."""
    return Path(out) / f"train_{resolution:g}A.json"


def sample_groups(data: Path, map_kinds: set[str]) -> dict[str, list[Path]]:
    """Each protein's sample files of the asked kinds (PROTEIN__KINDn.npz), its frame-averaged maps (*__map*) first:
    the CV's test maps, validation and sd_scale stay on that kind."""
    return {p: sorted((f for f in fs if map_kind(f) in map_kinds), key=lambda f: ("__map" not in f.name, f.name))
            for p, fs in list_samples(data).items()}


def _train(a, groups: dict[str, list[Path]], proteins: list[str], split_seed: int, *, minutes: float, seed: int,
           channels: int, log: Path, init: dict | None):
    tr, va = split_proteins(proteins, VAL_FRACTION, split_seed)
    res = float(a.resolution)
    return train(load_items([f for p in tr for f in groups[p]], res), load_items([groups[p][0] for p in va], res),
                 minutes=minutes, seed=seed, channels=channels, outputs=2, log=log, init=init,
                 eval_seconds=a.eval_seconds, threads=a.threads, groups=a.groups, max_steps=a.max_steps,
                 batch=a.batch, lr=a.lr)


def _save(path: Path, model, res: float, info: dict, what: str) -> None:
    if is_main():
        save_checkpoint(path, model, "fcn", res, {k: v for k, v in info.items() if k != "history"})
        print(f"{what}: {info['steps']} steps, best val r {info['best_val_r']:.3f}", flush=True)


def fold_model(a, kind: str, k: int, folds: list[list[str]], groups: dict[str, list[Path]], init: dict | None):
    """Fold k's model: loaded if its checkpoint exists, else trained on the other folds' proteins (from the earlier
    run's fold k with ``--init-cv``, which must have the same folds, so the CV stays protein-disjoint)."""
    out, res = Path(a.out), float(a.resolution)
    ck = out / "cv" / f"{kind}_fold{k}.pt"
    if ck.exists():
        return load_checkpoint(ck)[0]
    if a.init_cv:
        prev_folds = json.loads(run_json(Path(a.init_cv).parent, res).read_text())["folds"]
        if prev_folds != folds:
            raise SystemExit(f"{a.init_cv}: its folds differ from this run's, so the CV would leak")
        init = load_checkpoint(Path(a.init_cv) / f"{kind}_fold{k}.pt")[0].state_dict()
    rest = [p for p in sorted(groups) if p not in folds[k]]
    model, info = _train(a, groups, rest, k, minutes=a.cv_minutes, seed=a.seed + k, channels=KINDS[kind],
                         log=out / "cv" / f"{kind}_fold{k}.jsonl", init=init)
    _save(ck, model, res, info, f"{kind} fold {k}")
    return model


def cv_test_maps(files: list[Path], eval_maps: int, other_kinds: list[str]) -> list[Path]:
    """A test protein's CV maps: its first ``eval_maps`` files (frame-averaged first), and one map of each other kind
    in ``other_kinds`` (map-only: voxel mode's weights are fitted over the kinds, see ``calibration.summarize``)."""
    out = list(files[:eval_maps])
    have = {map_kind(f) for f in out}
    for mk in other_kinds:
        out += [f for f in files if map_kind(f) == mk][:1] if mk not in have else []
    return out


def cv_rows(a, kind: str, folds: list[list[str]], groups: dict[str, list[Path]], init: dict | None) -> list[dict]:
    """``calibration.item_rows`` of every fold model on its own test proteins' maps (none with ``--cv-minutes 0``)."""
    res, rows = float(a.resolution), []
    other_kinds = a.fit_map_kinds.split(",") if kind == "map" else []
    for k, test in enumerate(folds if a.cv_minutes > 0 else []):
        model = fold_model(a, kind, k, folds, groups, init)
        for p in test:
            for f in cv_test_maps(groups[p], a.eval_maps, other_kinds):
                rows.append(item_rows(model, load_item(f, res), Path(a.ensembles), a.sd_slope, a.sd_power, res))
    return rows


def cv_fitted_on(rows: list[dict]) -> str:
    """What a CV's calibration was fitted on, in the words a model's metadata and the log carry: the engine's maps,
    labelled by the engine or by ATLAS MD (``dataset.make_sample``'s ``label_source``)."""
    sources = sorted({str(r.get("label_source", LABEL_UNRECORDED)) for r in rows}) or [LABEL_UNRECORDED]
    return (f"protein-disjoint CV of the training set: engine maps, labels from {' and '.join(sources)} "
            "(not md_reference)")


def cv_summary(a, kind: str, rows: list[dict]) -> tuple[dict, str]:
    """(the CV summary with its fitted calibration, what it was fitted on); without a CV at this resolution, the
    calibration of the run named by ``--calibration-from``."""
    summ = summarize(rows) if rows else {}
    if summ:
        summ["sd_slope"], summ["sd_power"], summ["fitted_on"] = a.sd_slope, a.sd_power, cv_fitted_on(rows)
    borrowed = json.loads(Path(a.calibration_from).read_text())["kinds"] if a.calibration_from else {}
    if not summ and kind in borrowed:
        summ = dict(borrowed[kind].get("cv", {}))
        return summ, f"{summ.get('fitted_on', cv_fitted_on([]))}, at the resolution of {a.calibration_from}"
    return summ, str(summ.get("fitted_on", cv_fitted_on([])))


def _print_summary(kind: str, summ: dict) -> None:
    print(f"{kind} CV: residue r {summ['residue_r']:.3f} (ANM of the structure {summ['anm_r']:.3f}), "
          f"coverage68 {summ['coverage68_raw']:.3f} (sd_scale {summ['sd_scale']:.2f}), "
          f"Spearman(SD,|err|) {summ['sd_spearman']:.3f}, contrast_weight {summ['contrast_weight']}, "
          f"native_contrast_weight {summ.get('native_contrast_weight', 0.0)} "
          f"(residue r {summ['residue_r_with_contrast']:.3f}), anm_weight {summ['anm_weight']}, "
          f"map_packing_weight {summ.get('map_packing_weight', 0.0)}"
          + (f" (residue r over map kinds {summ['residue_r_map_kinds']:.3f} -> "
             f"{summ['residue_r_with_packing']:.3f})" if "residue_r_with_packing" in summ else "")
          + f", map_anm_weight {summ.get('map_anm_weight', 0.0)}"
          + (f" (residue r {summ['residue_r_with_map_anm']:.3f})" if "residue_r_with_map_anm" in summ else ""),
          flush=True)


def calibration_of(summ: dict, fitted_on: str) -> dict:
    """The ``calibration`` metadata an exported model carries (the bundle's defaults where the CV gave nothing)."""
    cal = {"sd_scale": summ.get("sd_scale", 1.0), "anm_weight": summ.get("anm_weight", 0.0),
           "contrast_weight": summ.get("contrast_weight", 0.0),
           "native_contrast_weight": summ.get("native_contrast_weight", 0.0),
           "map_anm_weight": summ.get("map_anm_weight", 0.0),
           "map_packing_weight": summ.get("map_packing_weight", 0.0),
           "sd_slope": summ.get("sd_slope", 0.0), "sd_power": summ.get("sd_power", 1.0), "fitted_on": fitted_on}
    if cal["sd_slope"] or cal["sd_power"] != 1.0:
        cal["sd_slope_fitted_on"] = ("given to train (--sd-slope, --sd-power); sd_scale was fitted after it on the "
                                     "simulated CV (defmap-train md-calibrate refits all three on atlas_train's MD)")
    return cal


def onnx_name(channels: int, res: float) -> str:
    """As shipped: defmap-5A (map-only, the name it always had) and defmap-mapmodel-5A."""
    return f"defmap-{'mapmodel-' if channels == 2 else ''}{res:g}A"


def describe(channels: int, res: float) -> str:
    inp = "the map and the fitted model's own density (two channels)" if channels == 2 else "the map alone"
    return (f"fully convolutional DEFMap variant for maps at about {res:g} Å or better, input {inp}; outputs mean "
            "log10 RMSF (Å) and its log-variance. Trained on simulated maps of ANM ensembles with per-protein "
            "deviations only the map shows (not MD): see MODEL_CARD.md")


def final_model(a, kind: str, groups: dict[str, list[Path]], init: dict | None) -> Path:
    """The final model of a kind at this resolution, trained on all proteins unless its checkpoint exists."""
    out, res = Path(a.out), float(a.resolution)
    ckf = out / f"{kind}_{res:g}A.pt"
    if a.minutes > 0 and not ckf.exists():
        model, info = _train(a, groups, sorted(groups), 0, minutes=a.minutes, seed=a.seed, channels=KINDS[kind],
                             log=out / f"{kind}_{res:g}A.jsonl", init=init)
        _save(ckf, model, res, info, f"{kind} final")
    return ckf


def export_final(ckf: Path, channels: int, res: float, summ: dict, fitted_on: str) -> Path:
    """The final model as ONNX (OUT/onnx/defmap_5A.onnx, defmap_mapmodel_5A.onnx ...) with its CV metrics and
    calibration, parity-checked against onnxruntime."""
    model, ck = load_checkpoint(ckf)
    name = onnx_name(channels, res)
    dst = ckf.parent / "onnx" / f"{name.replace('-', '_')}.onnx"
    dev = export_onnx(model, dst, name, res, metrics={k: v for k, v in summ.items() if not k.startswith("_")},
                      training={k: v for k, v in ck.get("info", {}).items() if k != "history"},
                      description=describe(channels, res), extra={"calibration": calibration_of(summ, fitted_on)})
    print(f"{dst}: parity {dev:.1e}", flush=True)
    return dst


def initial_weights(a, kind: str) -> dict | None:
    """Where every model of this kind starts: an exported one-channel FCN (``--init-onnx``), a checkpoint of the
    same kind (``--init-checkpoint``, e.g. the 5 Å final model for the 6 and 7 Å fine-tunes), or random weights."""
    if a.init_onnx and a.init_checkpoint:
        raise SystemExit("give --init-onnx or --init-checkpoint, not both")
    if a.init_checkpoint:
        return load_checkpoint(Path(a.init_checkpoint))[0].state_dict()
    return init_from_onnx(Path(a.init_onnx), KINDS[kind], 2) if a.init_onnx else None


def init_from_onnx(path: Path, in_channels: int, outputs: int, logvar0: float = -3.8) -> dict:
    """A state dict for build('fcn', in_channels, outputs) from an exported one-channel FCN: its weights read the map
    channel, the model channel starts at zero weight, the log-variance output at zero weight and bias ``logvar0``."""
    import onnx
    import torch
    from onnx import numpy_helper
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(path)).graph.initializer}
    first = w["net.0.weight"]
    if in_channels > first.shape[1]:
        pad = torch.zeros(first.shape[0], in_channels - first.shape[1], *first.shape[2:])
        w["net.0.weight"] = torch.cat([first, pad], dim=1)
    last = max(int(k.split(".")[1]) for k in w)
    if outputs > w[f"net.{last}.weight"].shape[0]:
        lw, lb = w[f"net.{last}.weight"], w[f"net.{last}.bias"]
        w[f"net.{last}.weight"] = torch.cat([lw, torch.zeros(outputs - lw.shape[0], *lw.shape[1:])])
        w[f"net.{last}.bias"] = torch.cat([lb, torch.full((outputs - lb.shape[0],), logvar0)])
    return w


def run(a) -> dict:
    """``defmap-train train``: every kind of ``--kinds`` at ``--resolution``; writes OUT/train_<res>A.json."""
    out, res = Path(a.out), float(a.resolution)
    kinds = a.kinds.split(",")
    if a.init_checkpoint and len(kinds) != 1:
        raise SystemExit("--init-checkpoint fine-tunes one kind: give --kinds too")
    out.mkdir(parents=True, exist_ok=True)
    created = init_distributed()[3]  # under torchrun: one process group for every model this run trains
    groups = sample_groups(Path(a.data), set(a.map_kinds.split(",")))
    folds = folds_of(sorted(groups), a.folds)
    results: dict = {"command": "defmap-train " + " ".join(sys.argv[1:]), "folds": folds, "kinds": {},
                     "init": a.init_onnx or a.init_checkpoint or None}
    if a.init_cv:
        results["init_cv"] = a.init_cv
    for kind in kinds:
        init = initial_weights(a, kind)
        summ, fitted_on = cv_summary(a, kind, cv_rows(a, kind, folds, groups, init))
        results["kinds"][kind] = {"cv": summ}
        if summ and is_main():
            _print_summary(kind, summ)
        ckf = final_model(a, kind, groups, init)
        if ckf.exists() and is_main():
            export_final(ckf, KINDS[kind], res, summ, fitted_on)
    if is_main():
        write_json(run_json(out, res), results)
    if created:  # every rank is done with the group before any leaves (gloo aborts otherwise)
        import torch
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return results
