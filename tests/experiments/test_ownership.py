"""Only samhess's own files: the manifest identifies them by content, and runs, cleanup and
``--force`` leave every other file alone."""

from __future__ import annotations

import json
import shutil

import pytest

from samhess.cli import main
from samhess.errors import RunDirectoryError
from samhess.experiments.ownership import MANIFEST_FILE, OwnedFiles

from .conftest import tiny_cli_args


def test_a_file_is_samhess_s_while_its_content_is_what_samhess_wrote(tmp_path):
    owned = OwnedFiles(tmp_path)
    owned.write_files({"report.md": b"# samhess\n", "plots/a.png": b"png"})
    assert owned.owns("report.md") and owned.owns("plots/a.png")
    (tmp_path / "report.md").write_bytes(b"# samhess, edited by hand\n")
    assert not owned.owns("report.md")
    assert owned.foreign(["report.md", "plots/a.png", "absent.txt"]) == ["report.md"]
    with pytest.raises(RunDirectoryError, match="report.md, which samhess did not write|"
                                                "report.md was not written by samhess"):
        owned.write_bytes("report.md", b"new")
    assert (tmp_path / "report.md").read_bytes() == b"# samhess, edited by hand\n"
    (tmp_path / "plots" / "mine.txt").write_text("the user's")
    assert owned.remove_owned() == ["report.md"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine.txt", "plots", "report.md"]


def test_a_replaced_file_is_samhess_s_in_either_version(tmp_path):
    """The manifest accepts the old and the new content, since a kill may fall between the
    manifest's update and the file's atomic replacement."""
    owned = OwnedFiles(tmp_path)
    owned.write_bytes("checkpoint.pt", b"old")
    manifest = (tmp_path / MANIFEST_FILE).read_text()
    owned.write_bytes("checkpoint.pt", b"new")
    assert owned.owns("checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"old")  # as if killed before the rename
    assert owned.owns("checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"other")
    assert not owned.owns("checkpoint.pt")
    assert manifest != (tmp_path / MANIFEST_FILE).read_text()


@pytest.mark.parametrize(("extra", "ours"), [
    (b"", True), (b'{"step": 4', True), (b'{"step": 4}\n', True),
    (b'{"step": 4}\n{"st', False), (b'{"step": 4}\n{"step": 5}\n', False),
])
def test_a_log_is_samhess_s_up_to_one_line_beyond_the_manifest(tmp_path, extra, ours):
    owned = OwnedFiles(tmp_path)
    owned.write_bytes("metrics.jsonl", b"")
    for step in range(3):
        owned.append_line("metrics.jsonl", f'{{"step": {step}}}\n'.encode())
    with open(tmp_path / "metrics.jsonl", "ab") as handle:
        handle.write(extra)
    assert owned.owns("metrics.jsonl") is ours
    # A log cut back (resume) is still the log samhess wrote.
    data = (tmp_path / "metrics.jsonl").read_bytes()
    (tmp_path / "metrics.jsonl").write_bytes(data[:data.index(b"\n") + 1])
    assert owned.owns("metrics.jsonl")


def test_a_user_config_json_is_refused_without_suggesting_force(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}\n')
    (out / "notes.txt").write_text("the user's")
    args = ["run", "--optimizer", "sgd", "--out", str(out), "--quiet", *tiny_cli_args()]
    for extra in ([], ["--resume"], ["--force"]):
        assert main([*args, *extra]) == 2
        line = capsys.readouterr().err.strip()
        assert line == (f"samhess: error: {out} holds config.json, which samhess did not write "
                        "(or which were changed since); move them away or choose another --out")
        assert "--force" not in line
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    assert (out / "config.json").read_text() == '{"my": "settings"}\n'


def test_a_fresh_run_never_overwrites_the_user_s_report(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "analysis").mkdir(parents=True)
    (out / "analysis" / "analysis.json").write_text("mine")
    assert main(["run", "--optimizer", "sgd", "--out", str(out), "--quiet",
                 *tiny_cli_args()]) == 2
    assert "holds analysis/analysis.json, which samhess did not write" in capsys.readouterr().err
    (out / "analysis" / "analysis.json").unlink()
    (out / "report.md").write_text("my report")
    assert main(["run", "--optimizer", "sgd", "--out", str(out), "--quiet",
                 *tiny_cli_args()]) == 2
    assert "holds report.md, which samhess did not write" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "my report"
    assert sorted(p.name for p in out.rglob("*")) == ["analysis", "report.md"]


def test_interrupted_before_its_first_record_a_run_keeps_the_user_s_files(
        tmp_path, monkeypatch, capsys):
    import samhess.experiments.train as train

    out = tmp_path / "out"
    for folder in ("analysis", "plots"):
        (out / folder).mkdir(parents=True)
        (out / folder / "mine.txt").write_text(f"the user's {folder}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "measure_record", interrupted)
    assert main(["run", "--optimizer", "sgd", "--out", str(out), "--quiet",
                 *tiny_cli_args()]) == 130
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "analysis", "analysis/mine.txt", "plots", "plots/mine.txt"]


def test_force_removes_samhess_s_files_only(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "plots" / "mine.png").write_bytes(b"the user's figure")
    (copy / "analysis" / "notes.md").write_text("the user's notes")
    summary = (copy / "summary.json").read_text()
    (copy / "summary.json").write_text(summary.replace("{", "{ ", 1))  # edited by hand
    assert main(["run", "--optimizer", "sgd", "--out", str(copy), "--force", "--quiet",
                 *tiny_cli_args(steps=3)]) == 2  # the edited summary.json would be overwritten
    (copy / "summary.json").unlink()
    assert main(["run", "--optimizer", "sgd", "--out", str(copy), "--force", "--quiet",
                 *tiny_cli_args(steps=3)]) == 0
    assert (copy / "plots" / "mine.png").read_bytes() == b"the user's figure"
    assert (copy / "analysis" / "notes.md").read_text() == "the user's notes"
    assert json.loads((copy / "config.json").read_text())["optimizer"] == "sgd"
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "run"
    assert "plots/mine.png" not in manifest["files"] and "config.json" in manifest["files"]


def test_every_file_a_report_writes_is_samhess_s_and_protected(tiny_run, tmp_path, capsys):
    from samhess.experiments.report import FIGURES
    from samhess.experiments.runfiles import COMPARE_FILES, REPORT_FIGURES, RUN_FILES

    assert tuple(spec.filename for spec in FIGURES) == REPORT_FIGURES
    written = sorted(str(path.relative_to(tiny_run)) for path in (tiny_run / "plots").iterdir())
    # the tiny run draws every figure (per-layer records, analysis, landscape)
    assert written == sorted([*(f"plots/{name}" for name in REPORT_FIGURES),
                              "plots/figures.json"])
    owned = OwnedFiles(tiny_run)
    for name in [*written, "summary.json", "report.md", "report.html"]:
        assert owned.owns(name), name
        assert name in RUN_FILES and name in COMPARE_FILES, name

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "plots" / "landscape.png").write_bytes(b"the user's figure")
    before = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file()}
    assert main(["report", str(copy)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"samhess: error: {copy / 'plots' / 'landscape.png'} was not written by samhess (or was "
        "changed since); move it away or choose another --out")
    assert {path: path.read_bytes() for path in copy.rglob("*") if path.is_file()} == before

    fresh = tmp_path / "fresh"
    (fresh / "plots").mkdir(parents=True)
    (fresh / "plots" / "figures.json").write_text("the user's numbers")
    assert main(["run", "--optimizer", "sgd", "--out", str(fresh), "--quiet",
                 *tiny_cli_args()]) == 2
    assert "holds plots/figures.json, which samhess did not write" in capsys.readouterr().err
    assert (fresh / "plots" / "figures.json").read_text() == "the user's numbers"
