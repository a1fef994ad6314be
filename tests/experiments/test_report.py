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
from samhess.experiments.report import FIGURES
from samhess.experiments.report_claims import Claim, ClaimEvidence, evaluate_claims
from samhess.experiments.report_summary import SUMMARY_KEYS, steps_to_base_final_loss

from .conftest import TINY_RUN_FLAGS, tiny_cli_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_FILES = tuple(spec.filename for spec in FIGURES)
REPORT_FILES = ("summary.json", "claims.json", "report.md", "report.html", "plots/figures.json",
                *(f"plots/{name}" for name in FIGURE_FILES))


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
    # "Flatter" is judged at the matched train loss, not at the last step.
    matched = summary["sam"]["at_matched_train_loss"]
    assert claims[2]["holds"] == (matched["lambda_max"]["mean"]
                                  < summary["sgd"]["at_matched_train_loss"]["lambda_max"]["mean"])
    assert f"train loss {matched['train_loss']:.4f}" in claims[2]["claim"]
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


def test_html_embeds_every_figure_under_its_caption(tiny_compare):
    text = (tiny_compare / "report.html").read_text()
    embedded = re.findall(r'<img id="([a-z]+)" alt="([^"]+)" src="data:image/png;base64,'
                          r'([A-Za-z0-9+/=]+)"', text)
    assert [name + ".png" for name, _, _ in embedded] == list(FIGURE_FILES)
    for name, caption, encoded in embedded:
        data = base64.b64decode(encoded)
        assert data == (tiny_compare / "plots" / f"{name}.png").read_bytes()
        assert f"<h2>{caption}</h2>" in text
    captions = dict((name, html.unescape(caption)) for name, caption, _ in embedded)
    # Captions say what the band is and how many seeds are drawn.
    for name in ("curves", "dynamics", "eigenvalues"):
        assert "mean over seeds; shaded band: lowest to highest seed" in captions[name]
    for name in ("gains", "taylor", "spectrum"):
        assert "every seed: 2 seeds" in captions[name]
    assert "mean over 2 seeds" in captions["layers"]
    assert "src=\"http" not in text and "<script" not in text


CHROMIUM = Path("/usr/bin/chromium")
#: Appended to a copy of the report (which has no script of its own): after loading, it counts
#: the images and those that decoded, the page's and the viewport's widths, the elements whose
#: right edge passes the viewport, and the table cells whose text takes more than one line.
_RENDER_PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const page = document.documentElement;
  const wide = [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > page.clientWidth + 0.5).length;
  let wrapped = 0;
  for (const cell of document.querySelectorAll('td')) {
    const range = document.createRange();
    range.selectNodeContents(cell);
    const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (lines.size > 1) wrapped++;
  }
  document.body.setAttribute('data-probe',
    [images.length, loaded, page.scrollWidth, page.clientWidth, wide, wrapped].join(':'));
});</script>"""


def _render(report: Path, page: Path, width: int = 1280) -> list[int]:
    page.write_text(report.read_text().replace("</body>", _RENDER_PROBE + "</body>"))
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--window-size={width},900", "--virtual-time-budget=10000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=180)
    match = re.search(r'data-probe="([\d:]+)"', result.stdout)
    assert match, result.stderr[-2000:]
    return [int(value) for value in match.group(1).split(":")]


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_html_renders_in_headless_chromium_every_figure_loaded_nothing_overflowing(
        tiny_compare, tmp_path):
    images, loaded, page_width, viewport, wide, wrapped = _render(
        tiny_compare / "report.html", tmp_path / "probe.html")
    assert images == len(FIGURE_FILES) and loaded == images
    assert 1200 <= viewport <= 1280  # the window, less a scroll bar
    assert page_width <= viewport and wide == 0
    assert wrapped == 0


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


def _matched(*per_seed_lambda_max, loss=0.02):
    values = list(per_seed_lambda_max)
    mean = statistics.mean(values)
    return {"train_loss": loss, "lambda_max": {"mean": mean, "std": 0.0},
            "per_seed": [{"step": 100.0, "lambda_max": v, "hessian_trace": 1.0} for v in values]}


def test_claims_say_plainly_when_they_fail():
    summary = {"sgd": _entry(1.0, 5.0), "sam": _entry(0.9, 2.0), "ire": _entry(0.7, 4.0, 0.7),
               "sam-ire": _entry(1.3, 4.0, 0.8), "adamw": _entry(0.18, 3.0),
               "admire": _entry(0.29, 3.0, 1.6)}
    # SAM ends lower than SGD (2.0 < 5.0) but at the matched train loss it is higher: the
    # verdict follows the matched values.
    matched = {"sgd": _matched(4.0, 5.0, 6.0), "sam": _matched(6.0, 4.5, 7.5)}
    claims = evaluate_claims(ClaimEvidence(summary, {name: [] for name in summary}, matched))
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
    assert claims[4].claim == ("SAM is flatter than SGD at matched train loss (lower lambda_max "
                               "where both reach train loss 0.0200)")
    assert "6.000 (SAM) vs 5.000 (SGD)" in claims[4].evidence
    assert "lower in 1 of 3 seeds" in claims[4].evidence
    assert "at the last step 2.000 vs 5.000" in claims[4].evidence
    # Without a matched loss the claim is undecided, never judged on the final values.
    undecided = evaluate_claims(ClaimEvidence({"sgd": summary["sgd"], "sam": summary["sam"]},
                                              {}, {}))
    assert [c.holds for c in undecided] == [False, None]
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
        orders = [json.loads((tiny_compare / name / f"seed-{seed}" / "analysis" / "analysis.json")
                             .read_text())["taylor"]["order"] for seed in (0, 1)]
        inside = sum(1 for order in orders if 0.8 <= order <= 1.2)
        line = next(text for text in markdown.splitlines()
                    if text.startswith(f"- {name}: slopes "))
        slopes = ", ".join(f"{order:.2f}" for order in orders)
        assert line.startswith(f"- {name}: slopes {slopes} of log error against log rho "
                               "(seeds 0, 1); ")
        assert ("the error falls like rho" in line) == (inside == 2)
        assert (f"outside [0.8, 1.2] for {2 - inside} of 2 seeds" in line) == (inside < 2)
        assert line[2:-1] in html.unescape(page)
