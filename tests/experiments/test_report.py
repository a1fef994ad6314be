"""``samhess compare`` and ``samhess report``: summary, claims, byte-identical rebuilds, images."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from samhess.cli import main
from samhess.experiments.report import (
    SUMMARY_KEYS,
    Claim,
    evaluate_claims,
    steps_to_base_final_loss,
)

from .conftest import TINY_RUN_FLAGS, tiny_cli_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = ("summary.json", "claims.json", "report.md", "report.html", "plots/curves.png",
                "plots/gains.png", "plots/taylor.png", "plots/spectrum.png")


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    args = ["compare", "--optimizers", "sgd,sam,ire", "--seeds", "2", "--out", str(out),
            "--quiet", *tiny_cli_args(steps=4, track_every=2)]
    assert main(args) == 0
    return out


def test_compare_writes_runs_summary_and_claims(tiny_compare, capsys):
    summary = json.loads((tiny_compare / "summary.json").read_text())
    assert list(summary) == ["sgd", "sam", "ire"]
    for name, entry in summary.items():
        assert set(SUMMARY_KEYS) <= set(entry) and entry["seeds"] == [0, 1]
        assert set(entry["test_accuracy"]) == {"mean", "std"}
        last = [json.loads((tiny_compare / name / f"seed-{seed}" / "metrics.jsonl").read_text()
                           .splitlines()[-1]) for seed in (0, 1)]
        for key, record_key in (("lambda_max", "lambda_max"), ("hessian_trace", "hessian_trace"),
                                ("test_accuracy", "test_accuracy")):
            values = [record[record_key] for record in last]
            assert entry[key]["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert entry[key]["std"] == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-15)
    # SGD's step is the gradient step itself: every gain, and so the ratio, is 1.
    assert summary["sgd"]["sharp_flat_gain_ratio"]["mean"] == pytest.approx(1.0, abs=1e-6)
    claims = json.loads((tiny_compare / "claims.json").read_text())
    assert [c["claim"].split()[0] for c in claims] == ["SAM", "IRE", "SAM"]
    sam_ratio = summary["sam"]["sharp_flat_gain_ratio"]["mean"]
    assert claims[0]["holds"] == (sam_ratio > 1)
    # IRE is judged against its base optimizer's step: the median of the records' vs-base ratio.
    medians = [statistics.median(
        json.loads(line)["gain_ratio_vs_base"] for line in
        (tiny_compare / "ire" / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()[1:])
        for seed in (0, 1)]
    ire_vs_base = summary["ire"]["ire_sharp_flat_gain_ratio_vs_base"]["mean"]
    assert ire_vs_base == pytest.approx(statistics.mean(medians), rel=1e-12)
    assert summary["sgd"]["ire_sharp_flat_gain_ratio_vs_base"]["mean"] is None
    assert "relative to its base optimizer SGD" in claims[1]["claim"]
    assert claims[1]["holds"] == (ire_vs_base < 1)
    assert claims[2]["holds"] == (summary["sam"]["lambda_max"]["mean"]
                                  < summary["sgd"]["lambda_max"]["mean"])
    markdown = (tiny_compare / "report.md").read_text()
    assert ("HOLDS" in markdown) and "| optimizer |" in markdown


def test_report_is_byte_identical_on_rebuild(tiny_compare, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_compare, copy)
    before = {name: (copy / name).read_bytes() for name in REPORT_FILES}
    for name in REPORT_FILES:
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"Report: {copy / 'report.html'}" in out
    for name in REPORT_FILES:
        assert (copy / name).read_bytes() == before[name], name
    assert main(["report", str(copy)]) == 0
    for name in REPORT_FILES:
        assert (copy / name).read_bytes() == before[name], name


def test_report_has_no_dates_or_absolute_paths(tiny_compare):
    text = (tiny_compare / "report.html").read_text()
    assert str(tiny_compare) not in text
    assert not re.search(r"20\d\d-\d\d-\d\d", text)


def test_pngs_are_valid_images(tiny_compare):
    import matplotlib.image

    for path in sorted((tiny_compare / "plots").glob("*.png")):
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0  # not a blank canvas
        try:
            from PIL import Image
        except ImportError:
            continue
        with Image.open(io.BytesIO(data)) as image:
            image.verify()


def test_html_embeds_every_plot(tiny_compare):
    text = (tiny_compare / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(embedded) == 4
    for encoded in embedded:
        assert base64.b64decode(encoded)[:8] == PNG_SIGNATURE
    assert "src=\"http" not in text and "<script" not in text


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_html_renders_in_headless_chromium_with_every_image_loaded(tiny_compare, tmp_path):
    # The report itself has no script; a copy with one appended reports each image's state.
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             " document.body.setAttribute('data-images', imgs.length + ':' + imgs.filter("
             "i => i.complete && i.naturalWidth > 0).length); });</script>")
    page = tmp_path / "probe.html"
    report = (tiny_compare / "report.html").read_text()
    page.write_text(report.replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'data-images="(\d+):(\d+)"', result.stdout)
    assert match, result.stderr[-2000:]
    total, loaded = map(int, match.groups())
    assert total == 4 and loaded == total


def test_compare_refuses_to_overwrite_without_resume_or_force(tiny_compare, capsys):
    assert main(["compare", "--optimizers", "sgd,sam,ire", "--seeds", "2", "--out",
                 str(tiny_compare), "--quiet", *tiny_cli_args(steps=4, track_every=2)]) == 2
    assert "already holds a comparison" in capsys.readouterr().err


def test_compare_resume_keeps_finished_runs(tiny_compare, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_compare, copy)
    shutil.rmtree(copy / "ire" / "seed-1")  # as if interrupted before the last run started
    assert main(["compare", "--optimizers", "sgd,sam,ire", "--seeds", "2", "--out", str(copy),
                 "--resume", "--quiet", *tiny_cli_args(steps=4, track_every=2)]) == 0
    for name in ("sgd", "sam", "ire"):
        for seed in (0, 1):
            path = Path(name) / f"seed-{seed}" / "metrics.jsonl"
            assert (copy / path).read_bytes() == (tiny_compare / path).read_bytes()
    # No wall-clock time in the report files: the rerun writes them byte for byte.
    for name in ("summary.json", "claims.json", "report.md", "report.html"):
        assert (copy / name).read_bytes() == (tiny_compare / name).read_bytes(), name


def _entry(ratio, lambda_max, vs_base=None):
    stat = lambda value: {"mean": value, "std": 0.0}  # noqa: E731
    return {"sharp_flat_gain_ratio": stat(ratio), "lambda_max": stat(lambda_max),
            "ire_sharp_flat_gain_ratio_vs_base": stat(vs_base)}


def test_claims_say_plainly_when_they_fail():
    summary = {"sgd": _entry(1.0, 5.0), "sam": _entry(0.9, 6.0), "ire": _entry(0.7, 4.0, 0.7),
               "sam-ire": _entry(1.3, 4.0, 0.8), "adamw": _entry(0.18, 3.0),
               "admire": _entry(0.29, 3.0, 1.6)}
    claims = evaluate_claims(summary, {name: [] for name in summary})
    assert [c.claim.split()[0] for c in claims] == ["SAM", "IRE", "SAM-IRE", "AdmIRE", "SAM"]
    # Each IRE kind is judged on its ratio against its own base's step, not the gradient
    # step: SAM-IRE holds at 0.8 although 1.3 against the gradient; AdmIRE fails at 1.6 although
    # Adam's scaling puts it at 0.29 against the gradient step.
    assert [c.holds for c in claims] == [False, True, True, False, False]
    assert claims[0].line().startswith("DOES NOT HOLD: SAM accelerates sharp directions")
    assert claims[3].line().startswith("DOES NOT HOLD: AdmIRE accelerates flat directions more "
                                       "than sharp ones, relative to its base optimizer AdamW")
    assert "AdmIRE's ratio against AdamW's step is 1.600" in claims[3].evidence
    assert "against a plain gradient step it is 0.290" in claims[3].evidence
    assert "6.000 (SAM) vs 5.000 (SGD)" in claims[4].evidence
    assert Claim("x", None, "no data").line().startswith("UNDECIDED")


def _records(*pairs):
    return [{"step": step, "train_loss": loss} for step, loss in pairs]


def test_steps_to_base_final_loss_on_hand_built_records():
    # Base (2 seeds) ends at step 300 with losses 0.50 and 0.30: target 0.40.
    base = [_records((0, 2.0), (150, 0.9), (300, 0.5)), _records((0, 2.0), (150, 0.8), (300, 0.3))]
    # Variant means: step 100 -> 0.45, step 200 -> 0.40 (<= 0.40: reached), step 300 -> 0.2.
    # At step 50 one seed is at 0.1, but the other did not record it: not a common step.
    variant = [_records((0, 2.0), (50, 0.1), (100, 0.5), (200, 0.35), (300, 0.2)),
               _records((0, 2.0), (100, 0.4), (200, 0.45), (300, 0.2))]
    assert steps_to_base_final_loss(variant, base) == {
        "base_final_train_loss": pytest.approx(0.4), "base_steps": 300, "steps": 200,
        "speedup": 1.5}
    slower = [_records((0, 2.0), (300, 0.41))]
    assert steps_to_base_final_loss(slower, base) == {
        "base_final_train_loss": pytest.approx(0.4), "base_steps": 300, "steps": None,
        "speedup": None}
    # Already below the target at its first record: step 0, and no finite speed-up.
    started_below = steps_to_base_final_loss([_records((0, 0.3), (300, 0.1))], base)
    assert (started_below["steps"], started_below["speedup"]) == (0, None)


def test_compare_reports_steps_to_the_base_final_loss(tiny_compare):
    summary = json.loads((tiny_compare / "summary.json").read_text())
    runs = {name: [[json.loads(line) for line in
                    (tiny_compare / name / f"seed-{seed}" / "metrics.jsonl").read_text()
                    .splitlines()] for seed in (0, 1)] for name in ("sgd", "ire")}
    target = statistics.mean(seed[-1]["train_loss"] for seed in runs["sgd"])
    steps = [record["step"] for record in runs["ire"][0]]
    means = [statistics.mean(seed[i]["train_loss"] for seed in runs["ire"])
             for i in range(len(steps))]
    expected = next((step for step, mean in zip(steps, means) if mean <= target), None)
    entry = summary["ire"]["steps_to_base_final_loss"]
    assert entry["base"] == "sgd" and entry["base_steps"] == 4
    assert entry["base_final_train_loss"] == pytest.approx(target, rel=1e-12)
    assert entry["steps"] == expected
    assert entry["speedup"] == (4 / expected if expected else None)
    assert "steps_to_base_final_loss" not in summary["sgd"]
    markdown = (tiny_compare / "report.md").read_text()
    assert "## Does IRE reach its base optimizer's loss in fewer steps?" in markdown
    assert ("IRE reached SGD's final train loss" in markdown
            or "IRE did not reach SGD's final train loss" in markdown)


def test_single_run_report_rebuilds_identically(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    before = {p: p.read_bytes() for p in [copy / "summary.json", copy / "report.html",
                                          copy / "report.md", *sorted((copy / "plots").iterdir())]}
    assert main(["report", str(copy)]) == 0
    assert {p: p.read_bytes() for p in before} == before
    assert json.loads((copy / "summary.json").read_text())["test_accuracy"]["std"] == 0.0


def test_every_tiny_setting_is_a_flag_mapping_to_its_config_key():
    from samhess.cli import _settings, build_parser

    args = build_parser().parse_args(["run", "--optimizer", "sgd", *tiny_cli_args()])
    assert _settings(args) == {"optimizer": "sgd", **TINY_RUN_FLAGS}


def test_report_states_per_optimizer_whether_the_taylor_error_falls_like_rho(tiny_compare):
    markdown = (tiny_compare / "report.md").read_text(encoding="utf-8")
    page = (tiny_compare / "report.html").read_text(encoding="utf-8")
    for name in ("sgd", "sam", "ire"):
        # the report plots the first seed's analysis
        analysis = json.loads(
            (tiny_compare / name / "seed-0" / "analysis" / "analysis.json").read_text())
        order = analysis["taylor"]["order"]
        falls_like_rho = 0.8 <= order <= 1.2
        line = next(text for text in markdown.splitlines() if text.startswith(f"- {name}: slope "))
        assert line.startswith(f"- {name}: slope {order:.2f} of log error against log rho; ")
        assert ("the error falls like rho" in line) == falls_like_rho
        assert ("does not fall like rho" in line) == (not falls_like_rho)
        assert line[2:-1] in html.unescape(page)
