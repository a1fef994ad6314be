"""``metrics.jsonl``: a run's records, one JSON object per line, appended as the run goes.

Each line is appended, flushed and fsynced, and recorded line by line in the directory's
manifest (:mod:`samhess.experiments.ownership`), so the log is samhess's by content. A record is
complete once its newline is on disk; a trailing piece without one (a kill mid-write) is not a
record. Every record is a JSON object with an integer ``step``, and the steps increase.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from samhess.errors import RunFileError
from samhess.experiments import runfiles
from samhess.experiments.ownership import OwnedFiles

__all__ = ["MetricsLog"]


class MetricsLog:
    """``metrics.jsonl``: one compact JSON object per line, appended, flushed and fsynced.

    Args:
        path: the log file (its folder is the run directory).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._owner = OwnedFiles(self.path.parent)

    def _complete_lines(self) -> list[bytes]:
        if not self.path.exists():
            return []
        return self.path.read_bytes().split(b"\n")[:-1]  # the last piece has no newline

    def records(self) -> list[dict[str, Any]]:
        """The complete records (a trailing line without its newline is ignored).

        Raises:
            RunFileError: a line is not JSON, not an object with an integer ``step``, or its
                step does not follow the previous one; named by line number.
        """
        records: list[dict[str, Any]] = []
        for number, line in enumerate(self._complete_lines(), start=1):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RunFileError(f"{self.path} line {number} is not JSON: {exc}") from None
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, bool) or not isinstance(step, int):
                raise RunFileError(f"{self.path} line {number} is not a samhess record (it has "
                                   "no integer step)")
            if records and step <= records[-1]["step"]:
                raise RunFileError(f"{self.path} line {number} holds step {step} after step "
                                   f"{records[-1]['step']}; the steps must increase")
            records.append(record)
        return records

    def truncate(self, count: int, expected_steps: Sequence[int] | None = None) -> None:
        """Keep the first ``count`` complete records and drop everything after them.

        Args:
            count: the records to keep (those the checkpoint had seen).
            expected_steps: the steps those records must hold, in order; anything else (a
                record of another process, a duplicate) is refused and nothing is cut.

        Raises:
            RunFileError: the log holds fewer records, or not the expected steps.
        """
        if not runfiles.is_main_process():
            return
        if not self.path.exists():
            if count:
                raise RunFileError(f"{self.path} is missing but the checkpoint saw {count} "
                                   "records")
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")[:-1]
        if len(lines) < count:
            raise RunFileError(f"{self.path} holds fewer records than the checkpoint saw "
                               f"({count})")
        if expected_steps is not None:
            steps = []
            for line in lines[:count]:
                try:
                    record = json.loads(line)
                    steps.append(record["step"] if isinstance(record, dict) else None)
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError):
                    steps.append(None)
            if steps != list(expected_steps):
                raise RunFileError(
                    f"cannot resume: {self.path} holds the steps {_steps_text(steps)} where the "
                    f"checkpoint expects {_steps_text(list(expected_steps))}; another process "
                    "may have written it. Start the run again with --force")
        end = sum(len(line) + 1 for line in lines[:count])
        if end != len(data):
            self._owner.truncate_log(self.path.name, end)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as a line and force it to disk."""
        line = runfiles.dumps_json(record, indent=None) + "\n"
        self._owner.append_line(self.path.name, line.encode("utf-8"))

    def reset(self) -> None:
        """Start an empty log."""
        self._owner.write_bytes(self.path.name, b"")


def _steps_text(steps: list[Any]) -> str:
    shown = steps if len(steps) <= 8 else [*steps[:4], "...", *steps[-3:]]
    return "[" + ", ".join(str(step) for step in shown) + "]"
