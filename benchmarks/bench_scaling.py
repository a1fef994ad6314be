"""How curvature costs grow with the model: samhess, PyHessian and curvlinops side by side.

Models: the project's MLP (two tanh hidden layers of equal width on 256 random features, 10
classes), ResNet-20 and ResNet-56 (CIFAR-shaped random images), and the decoder-only transformer
(random token windows), at sizes from about 10^4 to 10^7 parameters (``--max-params`` caps
them). Every model is in eval mode, float32, one batch (``Case`` below gives its size).

Sections, each measured side by side in one run:

1. **products**: one Hessian-vector product over one gradient (forward + backward of the same
   batch): samhess double backward on the kept graph ("cached") and rebuilt per product, samhess
   forward-over-reverse, PyHessian's ``hessian_vector_product`` on its kept graph (the call its
   algorithms make), and curvlinops' ``HessianLinearOperator`` (forward-over-reverse). The calls
   take turns round by round, the order rotating so that none always follows the gradient; each
   cell is the median over rounds of that round's time over the round's gradient time, and
   "noise" is half the interquartile range of those per-round ratios.
2. **memory**: peak bytes of tensors live at once over building each operator and one product
   (CUDA: ``max_memory_allocated``; CPU: the torch profiler), and over one gradient.
3. **eigen**: the top-5 eigenvalues, each library with its own stopping rule at tolerance
   ``--tol`` (1e-3): samhess ``eigenpairs`` (Lanczos, relative residual), PyHessian power
   iteration with deflation (relative change of each eigenvalue, at most 100 iterations each),
   curvlinops through ``scipy.sparse.linalg.eigsh`` (ARPACK, relative accuracy). Products,
   time, and the largest relative difference of the five eigenvalues from a reference:
   samhess Lanczos at tolerance 1e-6.
4. **trace**: ``--trace-matvecs`` products per estimate, ``--trace-seeds`` seeds: PyHessian's
   Hutchinson, samhess Hutchinson, Hutch++ and XTrace, curvlinops Hutchinson and Hutch++. Every
   estimator is unbiased, so the spread of its estimates over seeds (standard deviation over
   the mean) is its relative RMS error at that budget.
5. **tracking**: ``samhess run`` at its default tracking settings on three embedded tasks,
   shortened to ``--tracking-steps`` steps; from ``timing.json``, the seconds per training step
   and per record, and the share of time tracking takes over the default 1000 steps (a record
   every 50 steps and one at step 0: 21 records).

Time: on a CPU, process CPU time on ``--threads`` threads (one by default, so that other
processes' load barely enters); on CUDA, wall time between synchronizations. ``--budget-s``
bounds the run: a cell whose estimated time would pass it, or pass ``--cell-s``, is a "skipped"
row. A failing cell (out of memory, an unsupported operation) is a row with the error.

curvlinops is never a samhess dependency; install it beside samhess without BackPACK:
``pip install --no-deps curvlinops-for-pytorch==3.0.1 linear_operator==0.6.1 einops==0.8.2
einconv==0.1.0 opt-einsum==3.4.0``. Without it (or without PyHessian, the ``bench`` extra)
its columns say "not installed".

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py`` (``--quick``: small sizes and few
repeats, to check that every path runs; ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samhess.curvature import HessianOperator, eigenpairs, trace, trainable_parameters
from samhess.experiments.data import TaskData
from samhess.experiments.models import build_model, loss_for

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from bench_gpu import Report, failure_text, image_task, release, synchronize, token_task  # noqa: E402
from bench_optim import peak_bytes, quartile_half_range  # noqa: E402

SECTIONS = ("products", "memory", "eigen", "trace", "tracking")
PRODUCT_METHODS = ("gradient", "samhess cached", "samhess rebuilt", "samhess fwd-over-rev",
                   "PyHessian", "curvlinops")
NOT_INSTALLED = "not installed"
SKIPPED = "skipped (time budget)"
MIB = 2.0**20
DEFAULT_STEPS, DEFAULT_TRACK_EVERY = 1000, 50
TRACKING_TASKS = (("digits", "mlp"), ("mnist1d", "cnn"), ("chars", "transformer"))
REFERENCE_TOL = 1e-6


# ---------------------------------------------------------------------------------- the cases
def vector_task(batch_size: int, features: int = 256, seed: int = 0) -> TaskData:
    """Standard normal feature vectors with uniform labels in 0..9."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, features, generator=generator)
    targets = torch.randint(0, 10, (batch_size,), generator=generator)
    return TaskData("random-vectors", "classification", inputs, targets, inputs, targets,
                    (features,), 10, {"source": "torch.randn"})


@dataclass
class Case:
    """One model of one family on one batch."""

    family: str
    label: str
    model_name: str
    data: TaskData
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, device: torch.device) -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
        model = build_model(self.model_name, self.data, **self.options).to(device).eval()
        batch = (self.data.train_inputs.to(device), self.data.train_targets.to(device))
        return model, loss_for(self.data), batch

    def parameters(self) -> int:
        return sum(p.numel() for p in build_model(self.model_name, self.data, **self.options).parameters())


def cases(quick: bool) -> list[Case]:
    """The models, smallest first in each family."""
    if quick:
        return [
            Case("MLP", "MLP 2x32", "mlp", vector_task(16), dict(hidden_sizes=(32, 32), activation="tanh")),
            Case("ResNet", "ResNet-20", "resnet20", image_task(2)),
            Case("transformer", "transformer d32 L1", "transformer", token_task(2, 16, 64),
                 dict(dim=32, depth=1, heads=2, mlp_dim=64)),
        ]
    mlps = [Case("MLP", f"MLP 2x{width}", "mlp", vector_task(256),
                 dict(hidden_sizes=(width, width), activation="tanh"))
            for width in (32, 256, 900, 3000)]
    resnets = [Case("ResNet", label, name, image_task(32))
               for label, name in (("ResNet-20", "resnet20"), ("ResNet-56", "resnet56"))]
    transformers = [
        Case("transformer", f"transformer d{dim} L{depth}", "transformer", token_task(8, 64, 256),
             dict(dim=dim, depth=depth, heads=heads, mlp_dim=4 * dim))
        for dim, depth, heads in ((32, 1, 2), (128, 2, 4), (256, 4, 8), (512, 3, 8))
    ]
    return mlps + resnets + transformers


def case_text(case: Case) -> str:
    shape = tuple(case.data.train_inputs.shape)
    return f"{case.label}, batch {'x'.join(map(str, shape))}"


# ---------------------------------------------------------------------------------- timing
class Clock:
    """Process CPU time on a CPU, wall time between synchronizations on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.read = time.process_time if device.type == "cpu" else time.perf_counter
        self.name = "process CPU time" if device.type == "cpu" else "wall time (CUDA synchronized)"

    def time(self, function: Callable[[], Any]) -> tuple[Any, float]:
        synchronize(self.device)
        start = self.read()
        result = function()
        synchronize(self.device)
        return result, self.read() - start


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def pyhessian_engine(model: nn.Module, loss_fn: nn.Module, batch) -> Any:
    """PyHessian's ``hessian`` on a copy of the model (it leaves gradients on the parameters)."""
    from pyhessian import hessian

    with warnings.catch_warnings():  # its backward(create_graph=True) warns of a reference cycle
        warnings.simplefilter("ignore", UserWarning)
        return hessian(copy.deepcopy(model), loss_fn, data=batch, cuda=batch[0].is_cuda)


def curvlinops_operator(model: nn.Module, loss_fn: nn.Module, batch) -> Any:
    from curvlinops import HessianLinearOperator

    return HessianLinearOperator(model, loss_fn, trainable_parameters(model), [batch],
                                 check_deterministic=False)


def pyhessian_pieces(engine: Any, vector: torch.Tensor) -> list[torch.Tensor]:
    sizes = [p.numel() for p in engine.params]
    return [chunk.view_as(p) for chunk, p in zip(torch.split(vector, sizes), engine.params)]


def product_calls(model, loss_fn, batch, vector) -> dict[str, Callable[[], Any] | str]:
    """One call per method of section 1 (a string where the method is unavailable)."""
    params = trainable_parameters(model)
    inputs, targets = batch
    cached = HessianOperator(model, loss_fn, batch)
    rebuilt = HessianOperator(model, loss_fn, batch, cache_graph=False)
    forward = HessianOperator(model, loss_fn, batch, method="forward-over-reverse")
    calls: dict[str, Callable[[], Any] | str] = {
        "gradient": lambda: torch.autograd.grad(loss_fn(model(inputs), targets), params),
        "samhess cached": lambda: cached @ vector,
        "samhess rebuilt": lambda: rebuilt @ vector,
        "samhess fwd-over-rev": lambda: forward @ vector,
        "PyHessian": NOT_INSTALLED,
        "curvlinops": NOT_INSTALLED,
    }
    if installed("pyhessian"):
        from pyhessian.utils import hessian_vector_product

        engine = pyhessian_engine(model, loss_fn, batch)
        pieces = pyhessian_pieces(engine, vector)
        calls["PyHessian"] = lambda: hessian_vector_product(engine.gradsH, engine.params, pieces)
    if installed("curvlinops"):
        operator = curvlinops_operator(model, loss_fn, batch)
        calls["curvlinops"] = lambda: operator @ vector
    return calls


def memory_calls(model, loss_fn, batch, vector) -> dict[str, Callable[[], Any] | str]:
    """Each method from scratch: build what it keeps, then one product (or one gradient)."""
    params = trainable_parameters(model)
    inputs, targets = batch

    def pyhessian() -> Any:
        from pyhessian.utils import hessian_vector_product

        engine = pyhessian_engine(model, loss_fn, batch)
        return hessian_vector_product(engine.gradsH, engine.params, pyhessian_pieces(engine, vector))

    return {
        "gradient": lambda: torch.autograd.grad(loss_fn(model(inputs), targets), params),
        "samhess cached": lambda: HessianOperator(model, loss_fn, batch) @ vector,
        "samhess rebuilt": lambda: HessianOperator(model, loss_fn, batch, cache_graph=False) @ vector,
        "samhess fwd-over-rev": lambda: HessianOperator(
            model, loss_fn, batch, method="forward-over-reverse") @ vector,
        "PyHessian": pyhessian if installed("pyhessian") else NOT_INSTALLED,
        "curvlinops": (lambda: curvlinops_operator(model, loss_fn, batch) @ vector)
        if installed("curvlinops") else NOT_INSTALLED,
    }


@dataclass
class Ratio:
    """Median per-round ratio to the gradient, its noise, and the median seconds per call."""

    median: float
    noise: float
    seconds: float

    def cell(self) -> str:
        return f"{self.median:.2f} ± {self.noise:.2f}"


def ratios_in_turns(calls: dict[str, Callable[[], Any] | str], clock: Clock, rounds_max: int,
                    seconds_for_rounds: float) -> dict[str, Ratio | str]:
    """Per-round ratios to the gradient; the call order rotates by one every round."""
    results: dict[str, Ratio | str] = {}
    working: dict[str, Callable[[], Any]] = {}
    one_round = 0.0
    for name, call in calls.items():
        if isinstance(call, str):
            results[name] = call
            continue
        try:
            clock.time(call)
            one_round += clock.time(call)[1]
            working[name] = call
        except Exception as error:  # a failing method is a result, not the end of the run
            results[name] = failure_text(error)
            release(clock.device)
    if "gradient" not in working:
        return {name: results.get(name, "no gradient") for name in calls}
    rounds = max(3, int(min(rounds_max, seconds_for_rounds / max(one_round, 1e-9))))
    names = list(working)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(clock.time(working[name])[1])
    gradient = samples["gradient"]
    for name, times in samples.items():
        per_round = [t / g for t, g in zip(times, gradient)]
        results[name] = Ratio(statistics.median(per_round), quartile_half_range(per_round),
                              statistics.median(times))
    return results


# ---------------------------------------------------------------------------------- sections
@dataclass
class Measured:
    """What the sections found for one case, for the plot and the summary."""

    case: Case
    dim: int
    products: dict[str, Ratio | str] = field(default_factory=dict)
    eigen_seconds: dict[str, float] = field(default_factory=dict)


def products_section(report: Report, measured: list[Measured], clock: Clock, args) -> None:
    report.line("## 1. One Hessian-vector product over one gradient\n")
    report.line(f"Median over rounds of (product time / the round's gradient time) ± half the "
                f"interquartile range of those ratios; at most {args.repeats} rounds, fewer for "
                f"large models (about {args.product_s:.0f} s of timing per model). {clock.name}.\n")
    rows = []
    for entry in measured:
        prefix = [entry.case.family, case_text(entry.case), str(entry.dim)]
        if report.over_budget():
            rows.append(prefix + [SKIPPED] * (len(PRODUCT_METHODS) + 1))
            continue
        model, loss_fn, batch = entry.case.build(clock.device)
        vector = torch.randn(entry.dim, generator=torch.Generator().manual_seed(0)).to(clock.device)
        try:
            calls = product_calls(model, loss_fn, batch, vector)
        except Exception as error:
            rows.append(prefix + [failure_text(error)] * (len(PRODUCT_METHODS) + 1))
            continue
        entry.products = ratios_in_turns(calls, clock, args.repeats, args.product_s)
        gradient = entry.products["gradient"]
        cells = [f"{1e3 * gradient.seconds:.2f}" if isinstance(gradient, Ratio) else gradient]
        cells += [value.cell() if isinstance(value, Ratio) else value
                  for name, value in entry.products.items() if name != "gradient"]
        cached, peer = entry.products["samhess cached"], entry.products["PyHessian"]
        if isinstance(cached, Ratio) and isinstance(peer, Ratio):
            cells.append(f"{cached.median / peer.median:.3f}")
        else:
            cells.append("-")
        rows.append(prefix + cells)
        del calls, model
        release(clock.device)
    report.table(["family", "model", "params", "gradient ms", *PRODUCT_METHODS[1:],
                  "samhess cached / PyHessian"], rows, right_from=2)


def memory_section(report: Report, measured: list[Measured], clock: Clock) -> None:
    report.line("## 2. Peak memory (MiB) of building each operator and one product\n")
    report.line("Tensors allocated by the call and live at the same time (the model and batch "
                "excluded): " + ("`torch.cuda.max_memory_allocated`" if clock.device.type == "cuda"
                                 else "the torch profiler's allocation events") + ".\n")
    rows = []
    for entry in measured:
        prefix = [entry.case.family, case_text(entry.case), str(entry.dim)]
        if report.over_budget():
            rows.append(prefix + [SKIPPED] * len(PRODUCT_METHODS))
            continue
        model, loss_fn, batch = entry.case.build(clock.device)
        vector = torch.randn(entry.dim, generator=torch.Generator().manual_seed(0)).to(clock.device)
        cells = []
        for name, call in memory_calls(model, loss_fn, batch, vector).items():
            if isinstance(call, str):
                cells.append(call)
                continue
            try:
                cells.append(f"{peak_bytes(call, clock.device) / MIB:.1f}")
            except Exception as error:
                cells.append(failure_text(error))
            release(clock.device)
        rows.append(prefix + cells)
    report.table(["family", "model", "params", *PRODUCT_METHODS], rows, right_from=2)


class CountingOperator:
    """A scipy ``LinearOperator`` that counts its products (for ARPACK on curvlinops)."""

    def __init__(self, operator: Any) -> None:
        from scipy.sparse.linalg import LinearOperator

        self.count = 0
        inner = operator.to_scipy()

        def apply(x):
            self.count += 1 if x.ndim == 1 else x.shape[1]
            return inner @ x

        self.linear = LinearOperator(inner.shape, matvec=apply, matmat=apply, dtype=inner.dtype)


def by_magnitude(values) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=torch.float64).cpu()
    return values[torch.argsort(values.abs(), descending=True)]


def top_eigenvalues(method: str, model, loss_fn, batch, tol: float, k: int) -> tuple[torch.Tensor, int]:
    """The ``k`` eigenvalues of largest magnitude (what power iteration finds) and the products."""
    if method == "samhess lanczos":
        found = eigenpairs(HessianOperator(model, loss_fn, batch), k, "magnitude", tol=tol)
        return by_magnitude(found.eigenvalues), found.num_matvecs
    if method == "PyHessian power":
        import pyhessian  # noqa: F401

        module = sys.modules["pyhessian.hessian"]
        original, count = module.hessian_vector_product, [0]

        def counted(gradients, params, vector):
            count[0] += 1
            return original(gradients, params, vector)

        module.hessian_vector_product = counted
        try:
            engine = pyhessian_engine(model, loss_fn, batch)
            values, _ = engine.eigenvalues(maxIter=100, tol=tol, top_n=k)
        finally:
            module.hessian_vector_product = original
        return by_magnitude(values), count[0]
    if method == "curvlinops arpack":
        from scipy.sparse.linalg import eigsh

        counting = CountingOperator(curvlinops_operator(model, loss_fn, batch))
        values = eigsh(counting.linear, k=k, which="LM", tol=tol, return_eigenvectors=False)
        return by_magnitude(values), counting.count
    raise ValueError(method)


EIGEN_METHODS = (("samhess lanczos", None), ("PyHessian power", "pyhessian"),
                 ("curvlinops arpack", "curvlinops"))


def estimated_seconds(entry: Measured, name: str, products: int) -> float | None:
    ratio = entry.products.get(name)
    return ratio.seconds * products if isinstance(ratio, Ratio) else None


def eigen_section(report: Report, measured: list[Measured], clock: Clock, args) -> None:
    k = 5
    report.line(f"## 3. Top-{k} eigenvalues (largest magnitude) at tolerance {args.tol:g}\n")
    report.line("Largest magnitude, the eigenvalues power iteration converges to (the models are "
                "untrained, so their Hessians are indefinite). "
                f"Products, {clock.name} in seconds, and the largest relative difference of the "
                f"{k} eigenvalues from samhess Lanczos at tolerance {REFERENCE_TOL:g} (its products "
                "in the last column). A cell is skipped when its estimate (products of a typical "
                f"run times one product) passes {args.cell_s:.0f} s or the run's budget.\n")
    typical = {"samhess lanczos": 40, "PyHessian power": 250, "curvlinops arpack": 60}
    product_of = {"samhess lanczos": "samhess cached", "PyHessian power": "PyHessian",
                  "curvlinops arpack": "curvlinops"}
    rows = []
    for entry in measured:
        prefix = [entry.case.family, case_text(entry.case), str(entry.dim)]
        model, loss_fn, batch = entry.case.build(clock.device)
        results: dict[str, tuple[torch.Tensor, int, float] | str] = {}
        for name, module in (*EIGEN_METHODS, ("reference", None)):
            if module is not None and not installed(module):
                results[name] = NOT_INSTALLED
                continue
            product_name = product_of.get(name, "samhess cached")
            estimate = estimated_seconds(entry, product_name, typical.get(name, 80))
            remaining = args.budget_s - report.elapsed()
            if estimate is None or estimate > min(args.cell_s, remaining):
                results[name] = SKIPPED if estimate is not None else "no product time"
                continue
            method = "samhess lanczos" if name == "reference" else name
            tol = REFERENCE_TOL if name == "reference" else args.tol
            try:
                (values, products), seconds = clock.time(
                    lambda: top_eigenvalues(method, model, loss_fn, batch, tol, k))
                results[name] = (values, products, seconds)
                entry.eigen_seconds[name] = seconds
            except Exception as error:
                results[name] = failure_text(error)
            release(clock.device)
        reference = results["reference"]
        cells = []
        for name, _ in EIGEN_METHODS:
            result = results[name]
            if isinstance(result, str):
                cells += [result, "-", "-"]
                continue
            values, products, seconds = result
            if isinstance(reference, tuple):
                truth = reference[0]
                error = f"{float(((values - truth).abs() / truth.abs()).max()):.1e}"
            else:
                error = "-"
            cells += [f"{products}", f"{seconds:.2f}", error]
        cells.append(f"{reference[1]}" if isinstance(reference, tuple) else reference)
        rows.append(prefix + cells)
    header = ["family", "model", "params"]
    for name, _ in EIGEN_METHODS:
        header += [f"{name} products", f"{name} s", f"{name} error"]
    report.table(header + ["reference products"], rows, right_from=2)


TRACE_METHODS = (("PyHessian hutchinson", "pyhessian"), ("samhess hutchinson", None),
                 ("samhess hutch++", None), ("samhess xtrace", None),
                 ("curvlinops hutchinson", "curvlinops"), ("curvlinops hutch++", "curvlinops"))


def trace_estimate(name: str, model, loss_fn, batch, budget: int, seed: int) -> float:
    torch.manual_seed(seed)
    if name == "PyHessian hutchinson":
        samples = pyhessian_engine(model, loss_fn, batch).trace(maxIter=budget, tol=-math.inf)
        return sum(samples) / len(samples)
    if name.startswith("samhess"):
        method = name.split()[1]
        return trace(HessianOperator(model, loss_fn, batch), budget, method, seed=seed).estimate
    from curvlinops import hutchinson_trace, hutchpp_trace

    estimator = hutchinson_trace if name.endswith("hutchinson") else hutchpp_trace
    return float(estimator(curvlinops_operator(model, loss_fn, batch), budget))


def trace_section(report: Report, measured: list[Measured], clock: Clock, args) -> None:
    budget, seeds = args.trace_matvecs, args.trace_seeds
    report.line(f"## 4. Trace at {budget} products: spread over {seeds} seeds\n")
    report.line("Standard deviation of the estimates over the seeds, over that of PyHessian's "
                "Hutchinson estimates (every estimator is unbiased, so this is the ratio of their "
                "RMS errors at this budget; below 1 is better); PyHessian's own column is its "
                "standard deviation, and the last column the mean of samhess Hutch++'s estimates. "
                "Untrained models have traces near zero, so errors relative to the trace would "
                "mislead.\n")
    product_of = {"PyHessian": "PyHessian", "samhess": "samhess cached", "curvlinops": "curvlinops"}
    rows = []
    for entry in measured:
        prefix = [entry.case.family, case_text(entry.case), str(entry.dim)]
        model, loss_fn, batch = entry.case.build(clock.device)
        cells, mean, peer = [], "-", None
        for name, module in TRACE_METHODS:
            if module is not None and not installed(module):
                cells.append(NOT_INSTALLED)
                continue
            estimate = estimated_seconds(entry, product_of[name.split()[0]], budget * seeds)
            if estimate is None or estimate > min(args.cell_s, args.budget_s - report.elapsed()):
                cells.append(SKIPPED if estimate is not None else "no product time")
                continue
            try:
                values = [trace_estimate(name, model, loss_fn, batch, budget, seed)
                          for seed in range(seeds)]
            except Exception as error:
                cells.append(failure_text(error))
                continue
            spread = statistics.stdev(values)
            if name == "PyHessian hutchinson":
                peer = spread
                cells.append(f"{spread:.3g}")
            else:
                cells.append(f"{spread / peer:.3f}" if peer else f"{spread:.3g} (std)")
            if name == "samhess hutch++":
                mean = f"{statistics.fmean(values):.4g}"
            release(clock.device)
        rows.append(prefix + cells + [mean])
    report.table(["family", "model", "params", *(name for name, _ in TRACE_METHODS),
                  "Tr(H), hutch++ mean"], rows, right_from=2)


def tracking_section(report: Report, clock: Clock, args) -> None:
    records_default = 1 + DEFAULT_STEPS // DEFAULT_TRACK_EVERY
    report.line(f"## 5. `samhess run` tracking overhead at default settings\n")
    report.line(f"`samhess run --dataset D --steps {args.tracking_steps}` (every other setting "
                f"default: sgd, a record every {DEFAULT_TRACK_EVERY} steps with the top-3 "
                "eigenvalues, Hutch++ trace, gains and losses). From its `timing.json` (wall "
                "time): seconds per training step and per record, and the share of tracking "
                f"over the default {DEFAULT_STEPS} steps with their {records_default} records.\n")
    rows = []
    for dataset, model in TRACKING_TASKS:
        prefix = [dataset, model]
        if report.over_budget():
            rows.append(prefix + [SKIPPED] * 4)
            continue
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory) / "run"
            command = [sys.executable, "-m", "samhess", "run", "--optimizer", "sgd", "--dataset", dataset,
                       "--steps", str(args.tracking_steps), "--device", clock.device.type,
                       "--threads", str(args.threads), "--quiet", "--out", str(out)]
            finished = subprocess.run(command, capture_output=True, text=True)
            if finished.returncode != 0:
                rows.append(prefix + [f"failed: {finished.stderr.strip()[-80:]}"] + ["-"] * 3)
                continue
            timing = json.loads((out / "timing.json").read_text())
            params = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
        records = 1 + args.tracking_steps // DEFAULT_TRACK_EVERY
        per_step = timing["train_seconds"] / timing["steps"]
        per_record = timing["tracking_seconds"] / records
        share = records_default * per_record / (DEFAULT_STEPS * per_step + records_default * per_record)
        batch = params.get("tracking_batch_size", "-")
        rows.append(prefix + [f"{1e3 * per_step:.2f}", f"{per_record:.2f}", str(batch), f"{100 * share:.1f}%"])
    report.table(["dataset", "model", "ms per training step", "s per record",
                  "tracking batch", f"tracking share over {DEFAULT_STEPS} steps"], rows, right_from=2)


# ---------------------------------------------------------------------------------- plot
def plot(measured: list[Measured], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"MLP": "o", "ResNet": "s", "transformer": "^"}
    colors = {name: f"C{i}" for i, name in enumerate(PRODUCT_METHODS)}
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in PRODUCT_METHODS:
        for family, marker in markers.items():
            points = [(m.dim, m.products[name].seconds) for m in measured
                      if m.case.family == family and isinstance(m.products.get(name), Ratio)]
            if points:
                xs, ys = zip(*points)
                left.plot(xs, ys, marker=marker, color=colors[name], linestyle="-" if family == "MLP" else ":",
                          label=name if family == "MLP" else None)
    for index, (name, _) in enumerate(EIGEN_METHODS):
        for family, marker in markers.items():
            points = [(m.dim, m.eigen_seconds[name]) for m in measured
                      if m.case.family == family and name in m.eigen_seconds]
            if points:
                xs, ys = zip(*points)
                right.plot(xs, ys, marker=marker, color=f"C{index + 6}",
                           linestyle="-" if family == "MLP" else ":",
                           label=name if family == "MLP" else None)
    for axis, title in ((left, "one product (or gradient), seconds"), (right, "top-5 eigenvalues, seconds")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.suptitle("markers: o MLP, s ResNet-20/56, ^ transformer (solid: MLP)", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--max-params", type=float, default=1.1e7, help="largest model (default 1.1e7)")
    parser.add_argument("--quick", action="store_true", help="tiny models and few repeats")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=21, help="most timing rounds per model")
    parser.add_argument("--product-s", type=float, default=20.0, help="timing seconds per model")
    parser.add_argument("--tol", type=float, default=1e-3, help="eigenvalue tolerance (default 1e-3)")
    parser.add_argument("--trace-matvecs", type=int, default=30)
    parser.add_argument("--trace-seeds", type=int, default=5)
    parser.add_argument("--tracking-steps", type=int, default=100)
    parser.add_argument("--cell-s", type=float, default=120.0, help="longest eigen or trace cell")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="the run's time budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    parser.add_argument("--plot", default=str(BENCHMARKS.parent / "docs" / "images" / "scaling.png"))
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device must be cpu, or cuda on a machine with a GPU; got {args.device!r}")
    if args.quick:
        args.repeats, args.product_s, args.trace_seeds = 3, 1.0, 2
        args.tracking_steps, args.cell_s, args.budget_s = 50, 30.0, 300.0
    args.sections = sections
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    clock = Clock(device)
    report = Report(args.out, args.budget_s)
    chosen = [case for case in cases(args.quick) if case.parameters() <= args.max_params]
    measured = [Measured(case, case.parameters()) for case in chosen]
    versions = [f"torch {torch.__version__}"]
    for module in ("pyhessian", "curvlinops"):
        if installed(module):
            from importlib.metadata import PackageNotFoundError, version

            try:
                versions.append(f"{module} {version('pyhessian' if module == 'pyhessian' else 'curvlinops-for-pytorch')}")
            except PackageNotFoundError:
                versions.append(module)
        else:
            versions.append(f"{module} {NOT_INSTALLED}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report.line("# Scaling: samhess, PyHessian and curvlinops\n")
    report.line(f"{name}, {args.threads} thread(s), {', '.join(versions)}; float32, eval mode; "
                f"models up to {args.max_params:.3g} parameters; {clock.name}.\n")
    if "products" in args.sections:
        products_section(report, measured, clock, args)
    if "memory" in args.sections:
        memory_section(report, measured, clock)
    if "eigen" in args.sections:
        eigen_section(report, measured, clock, args)
    if "trace" in args.sections:
        trace_section(report, measured, clock, args)
    if "tracking" in args.sections:
        tracking_section(report, clock, args)
    if measured and any(m.products for m in measured):
        plot(measured, Path(args.plot))
        report.line(f"Plot: {args.plot}")
    report.line(f"Total {report.elapsed():.0f} s.")
    report.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
