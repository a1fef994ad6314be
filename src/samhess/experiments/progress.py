"""Progress bars that tell the truth: drawn on a terminal; silent in logs, pipes, tests and with
``--quiet``.

A run's bar (:class:`RunProgress`) covers everything the run does, not only its steps: the
records (curvature tracking, step 0's included), the per-layer records and the final analysis.
Its postfix names the phase under way; its percentage and ETA come from the time each kind of
work has taken so far,

.. math::

    \\text{ETA} = n_\\text{steps} \\bar t_\\text{step} + n_\\text{records} \\bar t_\\text{record}
        + n_\\text{layer records} \\bar t_\\text{layer record} + t_\\text{analysis}
        + \\text{what is left of the phase under way},

with each :math:`n` what remains and each :math:`\\bar t` the mean measured so far. Until a
kind of work has been timed once the ETA is unknown (``ETA ?``); the final analysis, before it
has run, is estimated as :data:`ANALYSIS_IN_RECORDS` records (a comparison uses the time the
previous member's analysis took). A background thread redraws the bars twice a second, so that
elapsed time and ETA move while a long phase runs.

A comparison has one more bar above the run's (:class:`ComparisonProgress`): runs done, and an
ETA from the time finished runs took and what the current run has left.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

__all__ = ["progress_enabled", "RunProgress", "ComparisonProgress", "format_seconds"]

#: Before the final analysis has been timed, it is estimated at this many records' time (it
#: computes about twice a record's eigenvectors, a float64 Taylor check, the spectral density and
#: the loss-landscape slices).
ANALYSIS_IN_RECORDS = 3.0
#: Seconds between redraws by the background thread.
REDRAW_SECONDS = 0.5
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {status}"


def progress_enabled(quiet: bool = False) -> bool:
    """Draw bars only when stderr is a terminal and the user did not ask for quiet."""
    if quiet:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def format_seconds(seconds: float | None) -> str:
    """``1:02:03``, ``2:03`` or ``?`` (unknown)."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _StatusBar(tqdm):
    """A tqdm bar with a free-text ``status`` field for its format (tqdm's own postfix comes
    with a leading comma)."""

    status = ""

    @property
    def format_dict(self):
        values = super().format_dict
        values["status"] = self.status
        return values


class _Redrawer:
    """A daemon thread calling ``redraw`` every :data:`REDRAW_SECONDS` until stopped."""

    def __init__(self, redraw: Callable[[], None]):
        self._redraw = redraw
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="samhess-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(REDRAW_SECONDS):
            self._redraw()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class RunProgress:
    """The bar of one run: its phase, the steps done, the time elapsed and an ETA that counts
    the records and the final analysis.

    Args:
        desc: the bar's label.
        steps: the run's steps; ``step``: where it starts (a resumed run).
        records: the records still to take, not counting ``layer_records``.
        layer_records: the records still to take that also measure per-layer curvature.
        analysis: whether the final analysis is still to run.
        enabled: draw the bar (else every call does nothing visible).
        position: the bar's line (1 below a comparison's bar).
        analysis_seconds: the final analysis's expected time, when known from another run.
        parent: the comparison this run belongs to.
    """

    def __init__(self, *, desc: str, steps: int, step: int, records: int, layer_records: int,
                 analysis: bool, enabled: bool, position: int = 0,
                 analysis_seconds: float | None = None,
                 parent: ComparisonProgress | None = None):
        self.steps, self.step = steps, step
        self.left = {"record": records, "layer record": layer_records,
                     "analysis": int(analysis)}
        self.durations: dict[str, list[float]] = {"record": [], "layer record": [],
                                                  "analysis": []}
        self.analysis_seconds = analysis_seconds
        self.train_seconds, self.steps_timed = 0.0, 0
        self.loss: float | None = None
        self.phase_name = "starting"
        self._phase_kind: str | None = None
        self._phase_started = 0.0
        self._started = time.perf_counter()
        self._lock = threading.Lock()
        self._parent = parent
        self.enabled = enabled
        self._bar = _StatusBar(total=100.0, desc=desc, disable=not enabled, leave=False,
                               file=sys.stderr, dynamic_ncols=True, position=position,
                               bar_format=_BAR_FORMAT)
        self._redrawer = _Redrawer(self.redraw) if enabled and parent is None else None
        if parent is not None:
            parent.attach(self)
        self.redraw()

    # -- what the run reports ---------------------------------------------------------------

    @contextmanager
    def phase(self, name: str, kind: str) -> Iterator[None]:
        """Time a piece of work of ``kind`` (``record``, ``layer record``, ``analysis``),
        shown as ``name`` while it runs."""
        with self._lock:
            self.phase_name, self._phase_kind = name, kind
            self._phase_started = time.perf_counter()
        self.redraw()
        try:
            yield
        finally:
            with self._lock:
                self.durations[kind].append(time.perf_counter() - self._phase_started)
                self.left[kind] = max(0, self.left[kind] - 1)
                self.phase_name, self._phase_kind = "training", None
            self.redraw()

    def subphase(self, name: str) -> None:
        """Name the part of the phase under way (``final analysis: gains``)."""
        with self._lock:
            base = self.phase_name.split(":")[0]
            self.phase_name = f"{base}: {name}"
        self.redraw()

    def trained(self, seconds: float, loss: float) -> None:
        """One training step done, in ``seconds``, at mini-batch ``loss``."""
        with self._lock:
            self.step += 1
            self.train_seconds += seconds
            self.steps_timed += 1
            self.loss = loss
            self.phase_name = "training"

    # -- the estimate ----------------------------------------------------------------------

    def _expected(self, kind: str) -> float | None:
        measured = _mean(self.durations[kind])
        if measured is not None:
            return measured
        record = _mean(self.durations["record"]) or _mean(self.durations["layer record"])
        if kind == "analysis":
            if self.analysis_seconds is not None:
                return self.analysis_seconds
            return None if record is None else ANALYSIS_IN_RECORDS * record
        if kind == "layer record":
            return record
        return _mean(self.durations["layer record"])

    def remaining(self) -> float | None:
        """Seconds of work left, or ``None`` while a kind of work that remains is untimed."""
        with self._lock:
            total = 0.0
            steps_left = self.steps - self.step
            if steps_left:
                if not self.steps_timed:
                    return None
                total += steps_left * self.train_seconds / self.steps_timed
            for kind, count in self.left.items():
                if count:
                    expected = self._expected(kind)
                    if expected is None:
                        return None
                    total += count * expected
            if self._phase_kind is not None:
                expected = self._expected(self._phase_kind)
                if expected is None:
                    return None
                # the phase under way is still counted in `left`: take off what it has done
                total -= min(expected, time.perf_counter() - self._phase_started)
            return max(total, 0.0)

    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def postfix(self) -> str:
        remaining = self.remaining()
        parts = [f"step {self.step}/{self.steps}", self.phase_name,
                 f"{format_seconds(self.elapsed())} elapsed", f"ETA {format_seconds(remaining)}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        return ", ".join(parts)

    def redraw(self) -> None:
        """Recompute the percentage and the postfix, and draw (a no-op when disabled)."""
        if not self.enabled:
            return
        remaining = self.remaining()
        elapsed = self.elapsed()
        done = 0.0 if remaining is None else 100.0 * elapsed / max(elapsed + remaining, 1e-9)
        self._bar.n = min(done, 100.0)
        self._bar.status = self.postfix()
        self._bar.refresh()
        if self._parent is not None:
            self._parent.redraw()

    def close(self) -> None:
        if self._redrawer is not None:
            self._redrawer.stop()
        if self._parent is not None:
            self._parent.detach(self)
        self._bar.close()


class ComparisonProgress:
    """The bar of a comparison: runs done out of all, elapsed time and ETA.

    The ETA is the current run's remaining time plus, for each run still to start, the mean
    time of the finished runs of its optimizer (of all finished runs when none of its optimizer
    has finished; the current run's expected total before any has).

    Args:
        runs: the optimizer of each member run, in the order they run.
        done: how many of them are already finished (a resumed comparison).
        enabled: draw the bars.
    """

    def __init__(self, runs: list[str], *, done: int = 0, enabled: bool):
        self.runs = runs
        self.done = done
        self.enabled = enabled
        self.run_seconds: dict[str, list[float]] = {}
        self.analysis_seconds: list[float] = []
        self._current: RunProgress | None = None
        self._current_name: str | None = None
        self._started = time.perf_counter()
        self._bar = _StatusBar(total=len(runs), initial=done, desc="comparison",
                               disable=not enabled, leave=False, file=sys.stderr,
                               dynamic_ncols=True, position=0,
                               bar_format="{desc}: {n}/{total} runs done|{bar}| {status}")
        self._redrawer = _Redrawer(self._redraw_all) if enabled else None
        self.redraw()

    def run(self, name: str, *, desc: str, steps: int, step: int, records: int,
            layer_records: int, analysis: bool) -> RunProgress:
        """The bar of the member run of optimizer ``name`` that starts now."""
        self._current_name = name
        expected = _mean(self.analysis_seconds)
        return RunProgress(desc=desc, steps=steps, step=step, records=records,
                           layer_records=layer_records, analysis=analysis,
                           enabled=self.enabled, position=1, analysis_seconds=expected,
                           parent=self)

    def attach(self, run: RunProgress) -> None:
        self._current = run

    def detach(self, run: RunProgress) -> None:
        """The member run ``run`` ended: count it and remember what it took."""
        if self._current is run:
            self.analysis_seconds += run.durations["analysis"]
            self._current = None

    def finished(self, name: str, seconds: float) -> None:
        """A member run of optimizer ``name`` finished in ``seconds``."""
        self.done += 1
        self.run_seconds.setdefault(name, []).append(seconds)
        self._bar.n = self.done
        self.redraw()

    def skipped(self) -> None:
        """A member run was already finished (a resumed comparison)."""
        self.done += 1
        self._bar.n = self.done
        self.redraw()

    def remaining(self) -> float | None:
        current = self._current
        left_after = self.runs[self.done + (1 if current is not None else 0):]
        total = 0.0
        if current is not None:
            current_left = current.remaining()
            if current_left is None:
                return None
            total += current_left
        finished = [s for values in self.run_seconds.values() for s in values]
        for name in left_after:
            expected = _mean(self.run_seconds.get(name, [])) or _mean(finished)
            if expected is None and current is not None:
                left = current.remaining()
                expected = None if left is None else current.elapsed() + left
            if expected is None:
                return None
            total += expected
        return total

    def redraw(self) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._started
        self._bar.status = (f"{format_seconds(elapsed)} elapsed, "
                            f"ETA {format_seconds(self.remaining())}")
        self._bar.refresh()

    def _redraw_all(self) -> None:
        current = self._current
        if current is not None:
            current.redraw()
        else:
            self.redraw()

    def close(self) -> None:
        if self._redrawer is not None:
            self._redrawer.stop()
        self._bar.close()
