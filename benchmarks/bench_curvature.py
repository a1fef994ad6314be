"""samhess.curvature side by side with PyHessian, against a float64 answer.

One model (an MLP 64-64-32-10 on scikit-learn's digits, 6,570 parameters, trained for a few
hundred full-batch Adam steps so the Hessian has the outliers of a trained network), one batch of
512 examples, float32 for both libraries. The reference is float64: the top eigenvalues from
Lanczos converged to a relative residual of 1e-10, the trace from the exact diagonal (``dim``
products). Both libraries keep the gradient's graph of the single batch between products
(PyHessian always does; samhess does for single-batch data).

Tables (medians over ``--seeds`` seeds, ``--trace-seeds`` for the trace):

(a) top-1 and top-10 eigenvalues: Hessian-vector products, CPU time and the largest relative
    error of the k eigenvalues. PyHessian: power iteration with deflation, its defaults
    (``maxIter=100, tol=1e-3``). samhess: ``eigenpairs`` (restarted Lanczos in torch, and
    ARPACK through scipy), default tolerance (relative residual ``sqrt(eps)`` = 3.5e-4 in float32).
(b) trace at an equal budget of products: relative error. PyHessian: Hutchinson with
    ``tol=-inf`` so that it spends the whole budget. samhess: ``trace`` with each method.
(c) the cost of one Hessian-vector product over one gradient (forward + backward): the median
    over ``--product-repeats`` rounds of each round's ratio, ± half the interquartile range.
(d) how samhess computes products: double backward (cached graph or rebuilt per product) and
    forward-over-reverse (``torch.func.jvp`` over ``torch.func.grad``), single vectors and
    blocks of 10 columns, on this MLP and on a small CNN, per product in gradients.

Times are process CPU time on one thread (``torch.set_num_threads(1)``), so that other
processes' load does not enter; the methods take turns within each repetition, in an order that
rotates from one repetition to the next.

Run: ``python benchmarks/bench_curvature.py`` (about a minute on one CPU thread).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from samhess.curvature import HessianOperator, diagonal, eigenpairs, trace

TOP_TEN_MATVEC_RATIO = 1 / 3
TRACE_ERROR_RATIO = 1 / 2


def digits_batch(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    targets = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    inputs, targets = inputs[order], targets[order]
    return inputs, targets, inputs[:size], targets[:size]


def trained_mlp(inputs: torch.Tensor, targets: torch.Tensor, steps: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model.eval()  # as PyHessian leaves it; the MLP has no mode-dependent layer


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Tanh(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(16 * 16, 10),
    ).eval()


def cpu_seconds(function: Callable[[], object]) -> tuple[object, float]:
    start = time.process_time()
    result = function()
    return result, time.process_time() - start


class CountingProducts:
    """Counts PyHessian's Hessian-vector products by wrapping the function it calls."""

    def __init__(self) -> None:
        import pyhessian  # noqa: F401  (the package's `hessian` name is the class; take the module)

        module = sys.modules["pyhessian.hessian"]
        self.module = module
        self.original = module.hessian_vector_product
        self.count = 0

        def counted(gradsH, params, v):
            self.count += 1
            return self.original(gradsH, params, v)

        module.hessian_vector_product = counted

    def reset(self) -> None:
        self.count = 0


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def median(values) -> float:
    return statistics.median(list(values))


def eigen_table(model, batch, reference, seeds, counter) -> tuple[list[str], dict]:
    from pyhessian import hessian as PyHessian

    loss_fn = nn.CrossEntropyLoss()
    rows, summary = [], {}
    for k in (1, 10):
        truth = reference[:k]
        names = ("PyHessian (power iteration)", "samhess lanczos", "samhess arpack")
        results: dict[str, list[tuple[int, float, float]]] = {name: [] for name in names}
        for seed in seeds:
            torch.manual_seed(seed)
            copy_model = copy.deepcopy(model)
            counter.reset()
            engine = PyHessian(copy_model, loss_fn, data=batch, cuda=False)
            (values, _), seconds = cpu_seconds(lambda: engine.eigenvalues(top_n=k))
            values = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
            error = float(((values - truth).abs() / truth.abs()).max())
            results["PyHessian (power iteration)"].append((counter.count, seconds, error))
            for method in ("lanczos", "arpack"):
                H = HessianOperator(model, loss_fn, batch)
                found, seconds = cpu_seconds(lambda: eigenpairs(H, k, "largest", seed=seed, method=method))
                error = float(((found.eigenvalues.double() - truth).abs() / truth.abs()).max())
                results[f"samhess {method}"].append((found.num_matvecs, seconds, error))
        for name, runs in results.items():
            matvecs, seconds, error = (median(r[i] for r in runs) for i in range(3))
            rows.append(f"| top-{k} | {name} | {matvecs:.0f} | {seconds:.3f} | {error:.1e} |")
            summary[(k, name)] = (matvecs, error)
    header = ["| eigenvalues | method | matvecs | CPU s | max rel. error |", "| --- | --- | ---: | ---: | ---: |"]
    return header + rows, summary


def trace_table(model, batch, truth, seeds, budget) -> tuple[list[str], dict]:
    from pyhessian import hessian as PyHessian

    loss_fn = nn.CrossEntropyLoss()
    errors: dict[str, list[float]] = {"PyHessian hutchinson": []}
    for seed in seeds:
        torch.manual_seed(seed)
        engine = PyHessian(copy.deepcopy(model), loss_fn, data=batch, cuda=False)
        samples = engine.trace(maxIter=budget, tol=-math.inf)
        assert len(samples) == budget
        errors["PyHessian hutchinson"].append(relative(sum(samples) / len(samples), truth))
        H = HessianOperator(model, loss_fn, batch)
        for method in ("hutchinson", "hutch++", "xtrace"):
            estimate = trace(H, budget, method, seed=seed)
            errors.setdefault(f"samhess {method}", []).append(relative(estimate.estimate, truth))
    rows = ["| method | matvecs | median rel. error |", "| --- | ---: | ---: |"]
    for name, values in errors.items():
        rows.append(f"| {name} | {budget} | {median(values):.2e} |")
    return rows, {name: median(values) for name, values in errors.items()}


def product_table(models: dict[str, nn.Module], batch, repeats: int) -> list[str]:
    """Per-round ratios to the gradient, as ``bench_scaling.py`` measures them at every size."""
    from pyhessian.utils import hessian_vector_product

    from bench_scaling import Clock, ratios_in_turns

    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = batch
    rows = ["| model | params | samhess HVP / gradient | PyHessian HVP / gradient | samhess / PyHessian |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for name, model in models.items():
        H = HessianOperator(model, loss_fn, batch)
        v = torch.randn(H.dim, generator=torch.Generator().manual_seed(0))
        engine_model = copy.deepcopy(model)
        params = list(engine_model.parameters())
        gradient = torch.autograd.grad(loss_fn(engine_model(inputs), targets), params, create_graph=True)
        pieces = [chunk.view_as(p) for chunk, p in zip(torch.split(v, [p.numel() for p in params]), params)]

        def one_gradient():
            model.zero_grad()
            loss_fn(model(inputs), targets).backward()

        ratios = ratios_in_turns(
            {
                "gradient": one_gradient,
                "samhess": lambda: H @ v,
                "PyHessian": lambda: hessian_vector_product(gradient, params, pieces),
            },
            Clock(torch.device("cpu")), repeats, seconds_for_rounds=float("inf"),
        )
        ours, peer = ratios["samhess"], ratios["PyHessian"]
        rows.append(f"| {name} | {H.dim} | {ours.cell()} | {peer.cell()} | {ours.median / peer.median:.3f} |")
        model.zero_grad()
    return rows


def time_in_turns(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU seconds per call; the order rotates every repetition, since a call measured
    right after the gradient ran about 3% slower than the same call later in the round."""
    for function in functions.values():
        function()
    names = list(functions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(cpu_seconds(functions[name])[1])
    return {name: median(values) for name, values in samples.items()}


def method_table(models: dict[str, nn.Module], batch, repeats: int) -> list[str]:
    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = batch
    rows = [
        "| model | params | double backward, cached | double backward, rebuilt | forward-over-reverse | "
        "10 columns: cached | 10 columns: rebuilt | 10 columns: fwd-over-rev (vmap) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, model in models.items():
        cached = HessianOperator(model, loss_fn, batch)
        rebuilt = HessianOperator(model, loss_fn, batch, cache_graph=False)
        forward = HessianOperator(model, loss_fn, batch, method="forward-over-reverse")
        v = torch.randn(cached.dim, generator=torch.Generator().manual_seed(0))
        block = torch.randn(cached.dim, 10, generator=torch.Generator().manual_seed(1))

        def one_gradient():
            model.zero_grad()
            loss_fn(model(inputs), targets).backward()

        timings = time_in_turns(
            {
                "gradient": one_gradient,
                "cached": lambda: cached @ v,
                "rebuilt": lambda: rebuilt @ v,
                "forward": lambda: forward @ v,
                "cached10": lambda: cached @ block,
                "rebuilt10": lambda: rebuilt @ block,
                "forward10": lambda: forward @ block,
            },
            repeats,
        )
        g = timings["gradient"]
        per = [timings[key] / g for key in ("cached", "rebuilt", "forward")]
        per += [timings[key] / 10 / g for key in ("cached10", "rebuilt10", "forward10")]
        rows.append(f"| {name} | {cached.dim} | " + " | ".join(f"{value:.2f}" for value in per) + " |")
        model.zero_grad()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per configuration (default 10)")
    parser.add_argument("--trace-seeds", type=int, default=50, help="seeds for the trace table (default 50)")
    parser.add_argument("--budget", type=int, default=99, help="trace budget in products (default 99)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=21, help="timing repetitions (default 21)")
    parser.add_argument("--product-repeats", type=int, default=101,
                        help="rounds of table (c) (default 101)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))

    all_inputs, all_targets, inputs, targets = digits_batch(args.batch_size)
    model = trained_mlp(all_inputs, all_targets, args.train_steps)
    batch = (inputs, targets)
    loss_fn = nn.CrossEntropyLoss()

    exact = HessianOperator(copy.deepcopy(model).double(), loss_fn, batch)
    reference = eigenpairs(exact, 10, "largest", tol=1e-10).eigenvalues
    true_trace = float(diagonal(exact, "exact", block_size=128).sum())
    spectrum_note = (
        f"float64 reference: top eigenvalues {', '.join(f'{x:.4g}' for x in reference[:3].tolist())}, ..., "
        f"10th {reference[9]:.4g}; trace {true_trace:.4g}"
    )

    counter = CountingProducts()
    eigen_rows, eigen_summary = eigen_table(model, batch, reference, seeds, counter)
    trace_seeds = list(range(args.trace_seeds))
    trace_rows, trace_summary = trace_table(model, batch, true_trace, trace_seeds, args.budget)
    models = {"MLP": model, "CNN (BatchNorm, eval)": small_cnn()}
    product_rows = product_table(models, batch, args.product_repeats)
    method_rows = method_table(models, batch, args.repeats)

    power = eigen_summary[(10, "PyHessian (power iteration)")]
    ours = eigen_summary[(10, "samhess lanczos")]
    checks = [
        (
            f"top-10 matvecs: samhess/PyHessian = {ours[0] / power[0]:.3f} (target <= {TOP_TEN_MATVEC_RATIO:.3f}), "
            f"error {ours[1]:.1e} vs {power[1]:.1e}",
            ours[0] <= TOP_TEN_MATVEC_RATIO * power[0] and ours[1] <= power[1],
        ),
        (
            f"trace error at {args.budget} matvecs: samhess hutch++/PyHessian = "
            f"{trace_summary['samhess hutch++'] / trace_summary['PyHessian hutchinson']:.3f} "
            f"(target <= {TRACE_ERROR_RATIO})",
            trace_summary["samhess hutch++"] <= TRACE_ERROR_RATIO * trace_summary["PyHessian hutchinson"],
        ),
    ]

    print("# Curvature engine: samhess vs PyHessian\n")
    print(
        f"MLP 64-64-32-10 on digits ({exact.dim} parameters), batch of {args.batch_size}, float32, "
        f"{args.seeds} seeds, {args.threads} CPU thread(s); {spectrum_note}.\n"
    )
    print("(a) Top eigenvalues\n")
    print("\n".join(eigen_rows) + "\n")
    print(f"(b) Trace, {args.budget} Hessian-vector products, {args.trace_seeds} seeds\n")
    print("\n".join(trace_rows) + "\n")
    print("(c) One Hessian-vector product (graph of the batch kept) / one gradient: median of the "
          "per-round ratios ± half their interquartile range\n")
    print("\n".join(product_rows) + "\n")
    print("(d) samhess product methods, time per product / one gradient, median\n")
    print("\n".join(method_rows) + "\n")
    for text, passed in checks:
        print(f"- {'PASS' if passed else 'FAIL'}: {text}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
