"""What the report's figures draw, checked against numbers computed by hand from the run files.

Every figure writes the numbers it drew to ``plots/figures.json``; these tests recompute them
from ``metrics.jsonl`` and ``analysis.json`` with the standard library and compare.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from samhess.experiments.report import FIGURES
from samhess.experiments.stability import StabilityEdge, stability_threshold

SEEDS = (0, 1)
OPTIMIZERS = ("sgd", "sam", "ire")


def _records(compare, name, seed):
    path = compare / name / f"seed-{seed}" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _analysis(compare, name, seed):
    return json.loads((compare / name / f"seed-{seed}" / "analysis" / "analysis.json")
                      .read_text())


def _band_by_hand(compare, name, value):
    """Mean, lowest and highest over the seeds at each step every seed recorded."""
    per_seed = []
    for seed in SEEDS:
        values = {}
        for record in _records(compare, name, seed):
            number = value(record)
            if number is not None:
                values[record["step"]] = number
        per_seed.append(values)
    steps = sorted(set(per_seed[0]).intersection(*per_seed[1:]))
    return {"steps": steps,
            "mean": [statistics.fmean(v[s] for v in per_seed) for s in steps],
            "low": [min(v[s] for v in per_seed) for s in steps],
            "high": [max(v[s] for v in per_seed) for s in steps]}


def _assert_band(drawn, expected):
    assert drawn["steps"] == expected["steps"]
    assert drawn["seeds"] == len(SEEDS)
    for key in ("mean", "low", "high"):
        assert drawn[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key


@pytest.fixture(scope="module")
def figures(tiny_compare):
    return json.loads((tiny_compare / "plots" / "figures.json").read_text())


def test_every_figure_is_drawn_and_its_numbers_recorded(tiny_compare, figures):
    assert list(figures) == [spec.filename for spec in FIGURES]
    for spec in FIGURES:
        assert (tiny_compare / "plots" / spec.filename).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("panel", "value"), [
    ("train_loss", lambda r: r["train_loss"]),
    ("test_loss", lambda r: r["test_loss"]),
    ("test_error_percent", lambda r: 100.0 * (1.0 - r["test_accuracy"])),
    ("lambda_max", lambda r: r["lambda_max"]),
    ("hessian_trace", lambda r: r["hessian_trace"]),
])
def test_curves_are_seed_means_with_min_max_bands(tiny_compare, figures, panel, value):
    for name in OPTIMIZERS:
        _assert_band(figures["curves.png"][panel][name], _band_by_hand(tiny_compare, name, value))


@pytest.mark.parametrize("key", ["gain_ratio", "gain_ratio_vs_base", "sharp_gradient_share",
                                 "grad_norm"])
def test_the_claims_quantities_are_seed_bands(tiny_compare, figures, key):
    drawn = figures["dynamics.png"][key]
    for name in OPTIMIZERS:
        if key == "gain_ratio_vs_base" and name != "ire":
            assert name not in drawn  # only IRE kinds have a base to compare with
            continue
        _assert_band(drawn[name], _band_by_hand(tiny_compare, name, lambda r: r[key]))


def test_every_top_eigenvalue_is_a_seed_band(tiny_compare, figures):
    k = len(_records(tiny_compare, "sgd", 0)[0]["eigenvalues"])
    for name in OPTIMIZERS:
        drawn = figures["eigenvalues.png"][name]
        assert list(drawn) == [f"lambda_{i + 1}" for i in range(k)]
        for i in range(k):
            _assert_band(drawn[f"lambda_{i + 1}"],
                         _band_by_hand(tiny_compare, name, lambda r, i=i: r["eigenvalues"][i]))


def test_the_edges_of_stability_follow_the_records(tiny_compare, figures):
    edges = figures["curves.png"]["stability_edge"]
    config = json.loads((tiny_compare / "sam" / "seed-0" / "config.json").read_text())
    lr, rho = config["lr"], config["rho"]
    for name in ("sgd", "ire"):  # IRE over SGD keeps gradient descent's edge 2/lr
        assert edges[name]["edge"] == StabilityEdge.GRADIENT_DESCENT.value
        assert edges[name]["mean"] == pytest.approx([2.0 / lr] * len(edges[name]["steps"]))
    expected = _band_by_hand(tiny_compare, "sam", lambda r: (
        4.0 / lr / (1.0 + math.sqrt(1.0 + 8.0 * rho / r["grad_norm"] / lr))))
    assert edges["sam"]["edge"] == StabilityEdge.SAM.value
    _assert_band(edges["sam"], expected)
    # each point lies on SAM's edge: lr lambda (1 + rho lambda / ||g||) = 2, per seed
    for record in _records(tiny_compare, "sam", 0):
        edge = stability_threshold(StabilityEdge.SAM, lr, rho, record["grad_norm"])
        assert lr * edge * (1.0 + rho * edge / record["grad_norm"]) == pytest.approx(2.0)


def test_per_layer_heat_maps_are_seed_means_of_the_layer_records(tiny_compare, figures):
    drawn = figures["layers.png"]
    for name in OPTIMIZERS:
        runs = [{r["step"]: r["layer_curvature"] for r in _records(tiny_compare, name, seed)
                 if r["layer_curvature"]} for seed in SEEDS]
        steps = sorted(set(runs[0]) & set(runs[1]))
        assert drawn[name]["steps"] == steps == [0, 4]
        blocks = [entry["block"] for entry in runs[0][0]]
        assert drawn[name]["blocks"] == blocks == ["layers.1", "layers.3", "layers.5"]
        for key in ("lambda_max", "hessian_trace"):
            expected = [statistics.fmean(run[step][b][key] for run in runs)
                        for step in steps for b in range(len(blocks))]
            flat = [value for row in drawn[name][key] for value in row]
            assert flat == pytest.approx(expected, rel=1e-12)


def test_analysis_figures_draw_every_seed(tiny_compare, figures):
    for name in OPTIMIZERS:
        gains = figures["gains.png"][name]
        taylor = figures["taylor.png"][name]
        assert list(gains) == list(taylor) == [f"seed {seed}" for seed in SEEDS]
        for seed in SEEDS:
            analysis = _analysis(tiny_compare, name, seed)
            assert gains[f"seed {seed}"]["gains"] == pytest.approx(analysis["gains"]["gains"])
            assert gains[f"seed {seed}"]["eigenvalues"] == pytest.approx(
                analysis["gains"]["eigenvalues"])
            assert taylor[f"seed {seed}"]["order"] == analysis["taylor"]["order"]
        assert list(figures["spectrum.png"][name]) == [f"seed {seed}" for seed in SEEDS]


def test_landscape_slices_are_seed_bands_and_plane_means(tiny_compare, figures):
    drawn = figures["landscape.png"]
    for name in OPTIMIZERS:
        slices = [_analysis(tiny_compare, name, seed)["landscape"] for seed in SEEDS]
        assert drawn["offsets"] == slices[0]["offsets"]
        for key in ("along_top_eigenvector", "along_random_direction"):
            columns = list(zip(*(s[key] for s in slices)))
            assert drawn[name][key]["mean"] == pytest.approx(
                [statistics.fmean(c) for c in columns], rel=1e-12)
            assert drawn[name][key]["low"] == pytest.approx([min(c) for c in columns])
            assert drawn[name][key]["high"] == pytest.approx([max(c) for c in columns])
        size = len(drawn["offsets"])
        plane = [statistics.fmean(s["plane"][i][j] for s in slices)
                 for i in range(size) for j in range(size)]
        flat = [value for row in drawn[name]["plane_mean"] for value in row]
        assert flat == pytest.approx(plane, rel=1e-12)


def test_report_shows_matched_loss_layer_and_provenance_tables(tiny_compare):
    import samhess

    markdown = (tiny_compare / "report.md").read_text()
    summary = json.loads((tiny_compare / "summary.json").read_text())
    target = summary["sgd"]["at_matched_train_loss"]["train_loss"]
    assert f"reaches L* = {target:.4f}" in markdown
    assert "| optimizer | step reaching L* | lambda_max at L* |" in markdown
    assert "| optimizer | layer | step | lambda_max | Tr(H) | share of Tr(H) |" in markdown
    assert "| sgd | layers.1 (Linear, 4,160) | 4 |" in markdown
    # the layers' shares of the blocks' traces add up to one, per optimizer
    for name in OPTIMIZERS:
        shares = [block["trace_share"]["mean"] for block in summary[name]["layers"]]
        assert sum(shares) == pytest.approx(1.0)
    environment = json.loads((tiny_compare / "sgd" / "seed-0" / "config.json")
                             .read_text())["provenance"][0]
    assert "## Provenance" in markdown
    assert "|  | every run |" in markdown
    assert f"| samhess | {samhess.__version__} |" in markdown
    assert f"| torch | {environment['torch']} |" in markdown
    assert f"| device | {environment['device']} |" in markdown
    assert "| setting | value |" in markdown and "| layer_track_every | 4 |" in markdown
    assert "Task: digits / mlp, 2 seeds (0, 1), 4 steps of batch 32" in markdown
