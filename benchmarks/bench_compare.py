"""The default ``samhess compare`` (README's first command) against an earlier commit's, side by side.

Both versions run the same command, ``python -m samhess compare --quiet`` with no other
arguments (digits, MLP, SGD/SAM/IRE/SAM-IRE, 3 seeds of 1000 steps, the report), in fresh
output directories, taking turns: earlier, current, earlier, current, ... The earlier version is
the ``src`` tree of ``--baseline`` (any git revision), exported with ``git archive`` and put
first on ``PYTHONPATH``; the current one is this checkout's ``src``. Each comparison is timed by
the process CPU time of its child process (user + system, ``resource.getrusage``), on one
thread (``OMP_NUM_THREADS=1``, the command's default ``--threads 1``), so that other processes'
load on the machine does not enter. The table gives the median over ``--repeats`` runs of each
and the ratio of the medians, and says what part of the current run went where (the tracking
and training time its runs record in ``timing.json``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_compare.py --baseline REV`` (about 40 s of
CPU per comparison; 6 comparisons by default).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The ceiling the project sets on the current version's cost (issue 14).
TARGET_RATIO = 1.5


def _export(revision: str, into: Path) -> Path:
    """The ``src`` tree of ``revision``, extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "src"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _child_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _compare(source: Path, out: Path) -> float:
    """CPU seconds of one default comparison run from ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    before = _child_seconds()
    subprocess.run([sys.executable, "-m", "samhess", "compare", "--out", str(out), "--quiet"],
                   cwd=out.parent, env=env, check=True, stdout=subprocess.DEVNULL)
    return _child_seconds() - before


def _timing(out: Path) -> tuple[float, float]:
    """Training and tracking seconds (wall clock) summed over a comparison's runs."""
    train = tracking = 0.0
    for path in out.glob("*/seed-*/timing.json"):
        timing = json.loads(path.read_text())
        train += timing["train_seconds"]
        tracking += timing["tracking_seconds"]
    return train, tracking


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=3, help="comparisons of each version")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        scratch = Path(scratch)
        (scratch / "baseline").mkdir()
        sources = {"baseline": _export(args.baseline, scratch / "baseline"),
                   "current": ROOT / "src"}
        seconds: dict[str, list[float]] = {name: [] for name in sources}
        for repeat in range(args.repeats):
            for name, source in sources.items():
                out = scratch / f"{name}-{repeat}" / "compare"
                out.parent.mkdir()
                seconds[name].append(_compare(source, out))
                print(f"{name} run {repeat + 1}: {seconds[name][-1]:.1f} s CPU", flush=True)
        train, tracking = _timing(scratch / "current-0" / "compare")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline],
                            capture_output=True, text=True, check=True).stdout.strip()
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = medians["current"] / medians["baseline"]
    print()
    print("| version | runs | CPU s (median) | CPU s (all) |")
    print("| --- | ---: | ---: | --- |")
    for name, label in (("baseline", f"baseline ({commit})"), ("current", "current")):
        listed = ", ".join(f"{value:.1f}" for value in seconds[name])
        print(f"| {label} | {len(seconds[name])} | {medians[name]:.1f} | {listed} |")
    verdict = "met" if ratio <= TARGET_RATIO else "missed"
    print()
    print(f"- current / baseline: {ratio:.2f} (target <= {TARGET_RATIO}: {verdict})")
    print(f"- current, first run: training {train:.1f} s and tracking {tracking:.1f} s (wall "
          "clock, summed over the 12 runs' timing.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
