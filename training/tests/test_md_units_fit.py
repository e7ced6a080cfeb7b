"""defmap-train md-units: the spread and the SD factor it fits recover known ones, and the level model is a ridge fit
that extrapolates no further than the chains it saw."""

from __future__ import annotations

import numpy as np
import pytest

from chimerax.defmap import md_units
from defmap_train.md_units_fit import fit_spread, predict_level, ridge, sd_ratios


def _rows(spread: float, noise: float, n_maps: int = 20, n: int = 150, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_maps):
        pred = rng.normal(0.4, rng.uniform(0.1, 0.5), n)  # network units: any centre and width
        z = (pred - pred.mean()) / pred.std()
        truth = rng.normal(0.1, 0.1) + spread * z + rng.normal(0, noise, n)
        rows.append({"reported": pred, "truth": truth, "sd": np.full(n, noise * pred.std() / spread)})
    return rows


def test_spread_is_recovered():
    assert fit_spread(_rows(0.15, 0.05)) == pytest.approx(0.15, abs=0.01)


def test_sd_factor_is_one_when_the_sd_is_the_noise():
    """An SD equal to the errors' own SD (in network units) needs a factor near 1 for 68 % coverage."""
    ratios = sd_ratios(_rows(0.15, 0.05), 0.15)
    assert np.quantile(ratios, 0.68) == pytest.approx(1.0, abs=0.1)
    assert np.quantile(sd_ratios(_rows(0.15, 0.10), 0.15), 0.68) == pytest.approx(1.0, abs=0.1)


def test_level_ridge_fits_and_clamps():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, len(md_units.LEVEL_FEATURES)))
    y = 0.1 + 0.2 * x[:, 0] + rng.normal(0, 0.02, 60)
    level = ridge(x, y, alpha=0.01)
    assert np.corrcoef(predict_level(level, x), y)[0, 1] > 0.95
    far = predict_level(level, np.full((1, x.shape[1]), 100.0))[0]
    edge = predict_level(level, x.max(0, keepdims=True))[0]
    assert far == pytest.approx(edge)


def test_model_card_block_is_the_report_it_came_from(tmp_path):
    """md-units rewrites only the model card's marked block, from its report; the shipped card holds the shipped
    report's figures (no hand-edited number there)."""
    import json

    from defmap_train.md_units_fit import CARD, DOC_BEGIN, DOC_END, REPORT, docs_block
    from defmap_train.paths import REPO
    from defmap_train.validate_md import update_docs
    report = json.loads((REPO / REPORT).read_text(encoding="utf-8"))
    block = docs_block(report)
    assert block.startswith(DOC_BEGIN) and block.endswith(DOC_END)
    assert block in CARD.read_text(encoding="utf-8")
    assert f"{report['level_cv_mean_abs_error']:.3f} log10 units" in block
    doc = tmp_path / "CARD.md"
    doc.write_text(f"before\n{DOC_BEGIN}\nstale figures\n{DOC_END}\nafter\n", encoding="utf-8")
    changed = dict(report, level_cv_mean_abs_error=0.321)
    update_docs([doc], docs_block(changed), DOC_BEGIN, DOC_END)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("before\n") and text.endswith(f"{DOC_END}\nafter\n") and "stale figures" not in text
    assert "0.321 log10 units" in text
