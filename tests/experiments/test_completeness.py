"""Completeness is part of the data: ``report`` and ``analyze`` label an unfinished run or
comparison, at the top and per member, and withhold claims that compare unequal progress."""

from __future__ import annotations

import json
import shutil

import pytest

from samhess.cli import main

from .conftest import run_in_process, tiny_cli_args
from .test_report import CHROMIUM, _render

#: checkpoint at every record, so a stop at the step-6 record leaves a checkpoint at step 3
FLAGS = {"steps": 6, "track_every": 3}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A ``sgd`` run interrupted (Ctrl-C) while measuring its step-6 record."""
    import samhess.experiments.train as train

    original = train.measure_record

    def interrupted_at_the_end(*args, **kwargs):
        if kwargs["step"] == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    out = tmp_path_factory.mktemp("stopped") / "run"
    train.measure_record = interrupted_at_the_end
    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_process(out, optimizer="sgd", **FLAGS)
    finally:
        train.measure_record = original
    return out


def test_report_of_a_stopped_run_says_so_and_strict_exits_2(stopped_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(stopped_run, copy)
    assert [json.loads(line)["step"] for line in
            (copy / "metrics.jsonl").read_text().splitlines()] == [0, 3]
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("INCOMPLETE: this run is unfinished")
    assert out[1] == "sgd seed 0: stopped at step 3 of 6"
    report = (copy / "report.md").read_text()
    assert report.splitlines()[2].startswith("> **INCOMPLETE: this run is unfinished")
    assert "> - sgd seed 0: stopped at step 3 of 6" in report
    assert "| sgd (incomplete) |" in report
    assert "INCOMPLETE: this run is unfinished" in (copy / "report.html").read_text()
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["complete"] is False and summary["steps"] == [3]
    assert main(["report", str(copy), "--strict"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"samhess: error: {copy} is unfinished (see the top of its report); --strict")


def test_analyze_of_a_stopped_run_says_so_then_resume_completes_it_exactly(
        stopped_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(stopped_run, copy)
    assert main(["analyze", str(copy)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"INCOMPLETE: {copy} stopped at step 3 of 6; this is the model at that step (continue "
        "the run with samhess run --resume)")
    analysis = json.loads((copy / "analysis" / "analysis.json").read_text())
    assert (analysis["step"], analysis["steps"], analysis["complete"]) == (3, 6, False)
    assert main(["analyze", str(copy), "--strict"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"samhess: error: {copy} is an unfinished run; --strict")

    straight = tmp_path / "straight"
    run_in_process(straight, optimizer="sgd", **FLAGS)
    assert run_in_process(copy, optimizer="sgd", resume=True, **FLAGS).resumed_from == 3
    for name in ("metrics.jsonl", "analysis/analysis.json", "summary.json", "report.md"):
        assert (copy / name).read_bytes() == (straight / name).read_bytes(), name
    assert main(["report", str(copy), "--strict"]) == 0


@pytest.fixture(scope="module")
def small_compare(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert main(["compare", "--optimizers", "sgd,sam", "--seeds", "1", "--out", str(out),
                 "--quiet", *tiny_cli_args(steps=4, track_every=2)]) == 0
    return out


def _stop_sam_at_step_2(comparison):
    """As if SAM had been stopped at step 2 of 4 (its last record and analysis not written)."""
    metrics = comparison / "sam" / "seed-0" / "metrics.jsonl"
    metrics.write_bytes(b"".join(metrics.read_bytes().splitlines(keepends=True)[:2]))
    (comparison / "sam" / "seed-0" / "analysis" / "analysis.json").unlink()


def test_a_comparison_with_a_member_behind_withholds_the_claims_comparing_them(
        small_compare, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(small_compare, copy)
    claims = json.loads((copy / "claims.json").read_text())
    assert [c["withheld"] for c in claims] == [False, False]
    _stop_sam_at_step_2(copy)
    assert main(["report", str(copy)]) == 0
    screen = capsys.readouterr().out
    assert screen.splitlines()[:2] == [
        "INCOMPLETE: this comparison is unfinished; values are those of the last record each "
        "run reached, and claims comparing runs at different steps are withheld",
        "sam seed 0: stopped at step 2 of 4"]
    claims = {c["claim"]: c for c in json.loads((copy / "claims.json").read_text())}
    # the matched-loss verdict too: the loss both reached is set by the run that stopped first
    flatter = next(c for name, c in claims.items()
                   if name.startswith("SAM is flatter than SGD at matched train loss"))
    assert flatter["withheld"] is True and flatter["holds"] is None
    assert flatter["evidence"].startswith("withheld: the runs stopped at different steps (2, 4)")
    sharp = next(c for name, c in claims.items() if name.startswith("SAM accelerates"))
    assert sharp["withheld"] is False and sharp["holds"] is not None  # SAM against itself
    report = (copy / "report.md").read_text()
    assert "- **WITHHELD**: SAM is flatter than SGD at matched train loss" in report
    assert "HOLDS**: SAM is flatter" not in report and "HOLD**: SAM is flatter" not in report
    assert "WITHHELD</span>: SAM is flatter" in (copy / "report.html").read_text()
    assert "| sam (incomplete) |" in report and "| sgd |" in report
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["sam"]["complete"] is False and summary["sgd"]["complete"] is True
    assert main(["report", str(copy), "--strict"]) == 2


def test_a_comparison_with_a_member_not_started_says_so(small_compare, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(small_compare, copy)
    shutil.rmtree(copy / "sam")
    assert main(["report", str(copy)]) == 0
    assert "sam seed 0: not started" in capsys.readouterr().out.splitlines()[1]
    assert "> - sam seed 0: not started" in (copy / "report.md").read_text()


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_an_unfinished_report_renders_with_its_banner_nothing_overflowing(small_compare,
                                                                          tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_compare, copy)
    _stop_sam_at_step_2(copy)
    assert main(["report", str(copy)]) == 0
    page = (copy / "report.html").read_text()
    assert page.index('<div class="incomplete">') < page.index("<p>Task: ")
    images, loaded, page_width, viewport, wide, wrapped = _render(
        copy / "report.html", tmp_path / "probe.html")
    assert images > 0 and loaded == images
    assert page_width <= viewport and wide == 0 and wrapped == 0
