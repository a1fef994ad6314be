"""GPU figures for samhess: what only an accelerator shows, measured side by side in one run.

Sections, in the order they run (the numbers are the tables' numbers):

1. Hessian-vector products at scale: one product's time over one gradient's (forward and
   backward of the same model on the same batch), for ``HessianOperator`` with
   ``method="double-backward"`` (the gradient's graph kept between products) and
   ``method="forward-over-reverse"``, single vectors and blocks of 10 columns (per column);
   ResNet-20 and ResNet-56 on random CIFAR-shaped batches of 256 and 1024, and the
   decoder-only transformer on random tokens; float32. On CUDA also the peak memory of one
   product made from scratch (graph building included).
2. Eigenpairs and trace on ResNet-20, batch 1024: ``eigenpairs`` top-1 and top-10 with
   ``method="lanczos"`` (torch, on the device) and ``method="arpack"`` (scipy, on the host),
   wall time and products; ``trace`` with Hutch++ and 99 products. Time per product over the
   time of one bare product shows what the algorithm adds around the products (host
   synchronizations, transfers, orthogonalization).
4. Optimizers on ResNet-20, batch 256: ``benchmarks/bench_optim.py``'s measurement (SAM/SGD
   and IRE/SGD step-time ratios, peak memory) run on ResNet-20 instead of its CNN; then the
   float16 ``GradScaler`` SAM recipe of ``docs/optim.md``: steps with an inf injected into the
   gradients of the first or the second pass must be skipped with weights and optimizer state
   unchanged and the scale halved, clean steps must go through; and the step time of float32,
   float16 + GradScaler and bfloat16 SAM.
3. ``torch.compile``: forward-over-reverse products compiled (a ``torch.func`` product
   function compiled, or the model compiled under ``HessianOperator``) against eager products:
   first-call time (compilation included, inductor's graph cache off) and steady time per
   product, and the products' relative difference from the eager double-backward product.
   Runs last because compilation takes the longest and its cost is the least predictable.
   A failure (an unsupported transform, double backward through a compiled graph) becomes a
   table row, never an abort; so does an out-of-memory error anywhere.

Timing: wall time (``time.perf_counter``) between ``torch.cuda.synchronize`` calls, after two
warm-up calls; the functions of one table take turns round by round and each cell is the
median over ``--repeats`` rounds. float32 means true float32: TF32 is switched off for
convolutions and matrix products unless ``--tf32``; on CUDA, section 1 adds one row with TF32
on, to show what PyTorch's default for convolutions does to speed and to the products.

A time budget (``--budget-s``) guards the whole run: once it is spent, the remaining items
print "skipped (time budget)" instead of running, so the script ends near the budget.

Run on a GPU (sized for about 6 minutes on an H200; an estimate, not yet measured):
``PYTHONPATH=src OMP_NUM_THREADS=8 python3 benchmarks/bench_gpu.py --device cuda --out gpu.md``
Check on a CPU (about 70 s on one thread, tiny batches):
``OMP_NUM_THREADS=1 python benchmarks/bench_gpu.py --device cpu --quick``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samhess.curvature import HessianOperator, eigenpairs, flatten, trace, trainable_parameters
from samhess.experiments.data import TaskData
from samhess.experiments.models import build_model, loss_for
from samhess.optim import SAM, disable_running_stats

BENCHMARKS = Path(__file__).resolve().parent
SECTIONS = ("products", "eigen", "optim", "compile")
GIB = 2.0**30


# ---------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Sizes and repetitions of one run: the full run for a GPU, or ``--quick`` for a CPU check."""

    repeats: int
    image_batches: tuple[int, ...]
    token_batch: int
    token_length: int
    vocabulary: int
    transformer_options: dict[str, int]
    eigen_batch: int
    eigen_runs: int
    eigen_max_matvecs: int
    trace_matvecs: int
    optim_batch: int
    optim_windows: int
    optim_refresh_every: int
    compile_model: str
    compile_options: dict[str, Any]
    compile_batch: int
    budget_s: float


FULL = Settings(
    repeats=11, image_batches=(256, 1024), token_batch=128, token_length=128, vocabulary=512,
    transformer_options=dict(dim=256, depth=4, heads=8, mlp_dim=1024),
    eigen_batch=1024, eigen_runs=3, eigen_max_matvecs=400, trace_matvecs=99,
    optim_batch=256, optim_windows=9, optim_refresh_every=10,
    compile_model="resnet20", compile_options={}, compile_batch=256, budget_s=330.0,
)
QUICK = Settings(
    repeats=3, image_batches=(1, 2), token_batch=4, token_length=16, vocabulary=32,
    transformer_options=dict(dim=32, depth=2, heads=4, mlp_dim=64),
    eigen_batch=2, eigen_runs=1, eigen_max_matvecs=60, trace_matvecs=99,
    optim_batch=4, optim_windows=2, optim_refresh_every=5,
    # inductor's C++ compilation of ResNet-20's product takes a minute on a CPU: a small CNN
    # checks the same code paths
    compile_model="cnn", compile_options=dict(channels=(4, 8)), compile_batch=2, budget_s=110.0,
)


# ---------------------------------------------------------------------------------- output
class Report:
    """Lines to stdout and, flushed line by line, to ``--out`` (a killed run keeps its tables)."""

    def __init__(self, path: str | None, budget_s: float) -> None:
        self.file = open(path, "w", encoding="utf-8") if path else None
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()

    def table(self, header: list[str], rows: list[list[str]], right_from: int = 1) -> None:
        self.line("| " + " | ".join(header) + " |")
        self.line("| " + " | ".join("---" if i < right_from else "---:" for i in range(len(header))) + " |")
        for row in rows:
            self.line("| " + " | ".join(row) + " |")
        self.line()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


SKIPPED = "skipped (time budget)"


def failure_text(error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    message = message.replace("|", "/")[:100]
    return f"failed: {type(error).__name__}" + (f": {message}" if message else "")


# ---------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(function: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(function(), wall seconds)``, the device idle before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def time_in_turns(
    functions: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, float | str]:
    """Median seconds per call of each function, the functions taking turns round by round.

    A function that raises during its warm-up (out of memory, an unsupported operation) gets
    the failure's text instead of a time, and the others are timed without it.
    """
    results: dict[str, float | str] = {}
    working: dict[str, Callable[[], Any]] = {}
    for name, function in functions.items():
        try:
            for _ in range(warmup):
                timed(function, device)
            working[name] = function
        except Exception as error:  # a failing variant is a result, not the end of the run
            results[name] = failure_text(error)
            release(device)
    samples: dict[str, list[float]] = {name: [] for name in working}
    for _ in range(repeats):
        for name, function in working.items():
            samples[name].append(timed(function, device)[1])
    results.update({name: statistics.median(values) for name, values in samples.items()})
    return results


def peak_gib(make_call: Callable[[], Callable[[], Any]], device: torch.device) -> float | str:
    """Peak GiB allocated on the GPU beyond what was live before, over one call from scratch."""
    if device.type != "cuda":
        return "-"
    release(device)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        call = make_call()
        timed(call, device)
        peak = torch.cuda.max_memory_allocated(device) - before
    except Exception as error:
        peak = failure_text(error)  # type: ignore[assignment]
    call = None
    release(device)
    return peak if isinstance(peak, str) else peak / GIB


def ratio_cell(value: float | str, base: float | str, divide: int = 1) -> str:
    """``"ratio (ms)"`` of ``value / divide`` over ``base``, or the failure text."""
    if isinstance(value, str):
        return value
    per = value / divide
    if isinstance(base, str):
        return f"- ({1e3 * per:.2f} ms)"
    return f"{per / base:.2f} ({1e3 * per:.2f} ms)"


def gib_cell(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.2f}"


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off for cuDNN convolutions and cuBLAS matrix products, restored on exit."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------------------------- data, models
def image_task(batch_size: int, seed: int = 0) -> TaskData:
    """Random CIFAR-shaped images (3x32x32, standard normal) with uniform labels in 0..9."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (batch_size,), generator=generator)
    return TaskData("random-cifar", "classification", inputs, targets, inputs, targets,
                    (3, 32, 32), 10, {"source": "torch.randn"})


def token_task(batch_size: int, length: int, vocabulary: int, seed: int = 0) -> TaskData:
    """Random token windows; the targets are the next tokens, as in a language model's data."""
    generator = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, vocabulary, (batch_size, length + 1), generator=generator)
    inputs, targets = stream[:, :-1].contiguous(), stream[:, 1:].contiguous()
    return TaskData("random-tokens", "language_model", inputs, targets, inputs, targets,
                    (length,), vocabulary, {"source": "torch.randint"})


@dataclass
class Case:
    """One model on one batch."""

    label: str
    model_name: str
    data: TaskData
    options: dict[str, int] = field(default_factory=dict)
    tf32: bool = False

    @property
    def batch_size(self) -> int:
        return self.data.num_train

    def build(self, device: torch.device) -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
        """``(model in eval mode, loss, batch)`` on ``device``."""
        model = build_model(self.model_name, self.data, **self.options).to(device).eval()
        batch = (self.data.train_inputs.to(device), self.data.train_targets.to(device))
        return model, loss_for(self.data), batch


def random_vectors(dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A vector ``(dim,)`` and a block ``(dim, 10)``, the same for every method."""
    vector = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    block = torch.randn(dim, 10, generator=torch.Generator().manual_seed(1))
    return vector.to(device), block.to(device)


# ---------------------------------------------------------------------------------- 1. products
PRODUCT_KEYS = ("gradient", "cached", "forward", "cached10", "forward10")


def product_calls(model, loss_fn, batch, vector, block) -> dict[str, Callable[[], Any]]:
    """Fresh operators and the five calls that section 1 times."""
    cached = HessianOperator(model, loss_fn, batch)
    forward = HessianOperator(model, loss_fn, batch, method="forward-over-reverse")
    params = trainable_parameters(model)
    inputs, targets = batch

    def gradient():
        return torch.autograd.grad(loss_fn(model(inputs), targets), params)

    return {
        "gradient": gradient,
        "cached": lambda: cached @ vector,
        "forward": lambda: forward @ vector,
        "cached10": lambda: cached @ block,
        "forward10": lambda: forward @ block,
    }


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def product_cases(settings: Settings, device: torch.device) -> list[Case]:
    cases = [
        Case(label, name, image_task(batch))
        for label, name in (("ResNet-20", "resnet20"), ("ResNet-56", "resnet56"))
        for batch in settings.image_batches
    ]
    shape = " ".join(f"{k}={v}" for k, v in settings.transformer_options.items())
    cases.append(Case(
        f"transformer {shape} T={settings.token_length} V={settings.vocabulary}",
        "transformer",
        token_task(settings.token_batch, settings.token_length, settings.vocabulary),
        dict(settings.transformer_options),
    ))
    if device.type == "cuda":
        cases.append(Case("ResNet-20", "resnet20", image_task(max(settings.image_batches)), tf32=True))
    return cases


def products_section(report: Report, settings: Settings, device: torch.device) -> None:
    report.line("## 1. One Hessian-vector product / one gradient\n")
    report.line(
        "Cells: median time of one product over the median time of one gradient (forward + "
        "backward, same model, batch and mode), with the product's own median in ms; 10-column "
        f"blocks per column. Median of {settings.repeats} rounds, the five calls in turns. "
        "Models in eval mode (BatchNorm on running statistics), random data. The last column is "
        "||Hv(forward-over-reverse) - Hv(double-backward)|| / ||Hv(double-backward)||.\n"
    )
    header = ["model", "batch", "params", "precision", "gradient (ms)",
              "double-backward, cached graph", "forward-over-reverse",
              "10 columns: double-backward cached", "10 columns: forward-over-reverse (vmap)",
              "rel. diff. fwd-over-rev vs double-backward"]
    rows, memory_rows = [], []
    for case in product_cases(settings, device):
        tf32_on = device.type == "cuda" and (case.tf32 or torch.backends.cudnn.allow_tf32)
        precision = "TF32" if tf32_on else "float32"
        prefix = [case.label, str(case.batch_size)]
        if report.over_budget():
            rows.append(prefix + ["-", precision, SKIPPED] + ["-"] * 5)
            continue
        try:
            with tf32(True) if case.tf32 else contextlib.nullcontext():
                row, memory = product_row(case, settings, device)
            rows.append(prefix + [row[0], precision] + row[1:])
            memory_rows.append(prefix + [precision] + memory)
        except Exception as error:  # the next model may still fit
            traceback.print_exc()
            rows.append(prefix + ["-", precision, failure_text(error)] + ["-"] * 5)
        release(device)
    report.table(header, rows, right_from=2)
    if device.type == "cuda":
        report.line("Peak GPU memory (GiB) allocated by one call made from scratch (fresh operator, "
                    "so the first double-backward product includes building the kept graph), "
                    "beyond what was live before:\n")
        report.table(["model", "batch", "precision", "gradient", "double-backward, cached graph",
                      "forward-over-reverse", "10 columns: double-backward cached",
                      "10 columns: forward-over-reverse (vmap)"], memory_rows, right_from=3)


def product_row(case: Case, settings: Settings, device: torch.device) -> tuple[list[str], list[str]]:
    model, loss_fn, batch = case.build(device)
    dim = sum(p.numel() for p in trainable_parameters(model))
    vector, block = random_vectors(dim, device)
    memory = [gib_cell(peak_gib(lambda key=key: product_calls(model, loss_fn, batch, vector, block)[key],
                                device)) for key in PRODUCT_KEYS]
    calls = product_calls(model, loss_fn, batch, vector, block)
    try:
        difference = f"{relative_difference(calls['forward'](), calls['cached']()):.1e}"
    except Exception as error:
        difference = failure_text(error)
    times = time_in_turns(calls, settings.repeats, device)
    base = times["gradient"]
    cells = [
        str(dim),
        "-" if isinstance(base, str) else f"{1e3 * base:.2f}",
        ratio_cell(times["cached"], base),
        ratio_cell(times["forward"], base),
        ratio_cell(times["cached10"], base, 10),
        ratio_cell(times["forward10"], base, 10),
        difference,
    ]
    if isinstance(base, str):
        cells[1] = base
    return cells, memory


# ---------------------------------------------------------------------------------- 2. eigen, trace
def eigen_section(report: Report, settings: Settings, device: torch.device) -> None:
    case = Case("ResNet-20", "resnet20", image_task(settings.eigen_batch))
    model, loss_fn, batch = case.build(device)
    H = HessianOperator(model, loss_fn, batch)
    vector, _ = random_vectors(H.dim, device)
    product = time_in_turns({"product": lambda: H @ vector}, settings.repeats, device)["product"]
    report.line(f"## 2. Eigenpairs and trace, ResNet-20, batch {case.batch_size}\n")
    report.line(
        f"{H.dim} parameters, float32, eval mode, random data; double-backward products on the "
        f"kept graph, one bare product {1e3 * product:.2f} ms (median of {settings.repeats}). "
        f"Default tolerance (relative residual sqrt(eps) = 3.5e-4), at most "
        f"{settings.eigen_max_matvecs} products per call; medians over {settings.eigen_runs} "
        "seed(s). 'per product / bare' is wall time per product over the bare product's time: "
        "what the algorithm adds around the products.\n"
    )
    rows, found = [], {}
    for k in (1, 10):
        for method in ("lanczos", "arpack"):
            prefix = [f"top-{k}", method]
            if report.over_budget():
                rows.append(prefix + [SKIPPED] + ["-"] * 6)
                continue
            runs = []
            try:
                for seed in range(settings.eigen_runs):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # shown as 'converged'
                        result, seconds = timed(lambda: eigenpairs(
                            H, k, "largest", seed=seed, method=method,
                            max_matvecs=settings.eigen_max_matvecs), device)
                    runs.append((seconds, result.num_matvecs, result.converged, result.eigenvalues.cpu()))
            except Exception as error:
                traceback.print_exc()
                rows.append(prefix + [failure_text(error)] + ["-"] * 6)
                release(device)
                continue
            seconds = statistics.median(r[0] for r in runs)
            matvecs = statistics.median(r[1] for r in runs)
            values = runs[0][3]
            found[(k, method)] = values
            rows.append(prefix + [
                f"{seconds:.3f}", f"{matvecs:.0f}", f"{1e3 * seconds / matvecs:.2f}",
                f"{seconds / matvecs / product:.2f}",
                f"{sum(r[2] for r in runs)}/{len(runs)}",
                f"{float(values[0]):.5g}", f"{float(values[-1]):.5g}",
            ])
    report.table(["eigenvalues", "method", "wall s", "products", "ms per product",
                  "per product / bare", "converged", "first eigenvalue", "k-th eigenvalue"],
                 rows, right_from=2)
    for k in (1, 10):
        if (k, "lanczos") in found and (k, "arpack") in found:
            a, b = found[(k, "lanczos")], found[(k, "arpack")]
            if a.shape == b.shape:
                difference = float(((a - b).abs() / b.abs()).max())
                report.line(f"- top-{k}: largest relative difference lanczos vs arpack "
                            f"eigenvalues (first seed) {difference:.1e}")
    report.line()

    budget = settings.trace_matvecs
    if report.over_budget():
        report.table(["method", "products", "wall s"], [["hutch++", str(budget), SKIPPED]])
        return
    runs = []
    try:
        for seed in range(settings.eigen_runs):
            estimate, seconds = timed(lambda: trace(H, budget, "hutch++", seed=seed), device)
            runs.append((seconds, estimate))
    except Exception as error:
        traceback.print_exc()
        report.table(["method", "products", "wall s"], [["hutch++", str(budget), failure_text(error)]])
        return
    seconds = statistics.median(r[0] for r in runs)
    first = runs[0][1]
    report.table(
        ["method", "products", "wall s", f"{budget} bare products s", "ratio", "estimate", "stderr"],
        [["hutch++", str(first.num_matvecs), f"{seconds:.3f}", f"{budget * product:.3f}",
          f"{seconds / (budget * product):.2f}", f"{first.estimate:.5g}", f"{first.stderr:.2g}"]],
    )


# ---------------------------------------------------------------------------------- 4. optimizers
def import_bench_optim() -> Any:
    """``benchmarks/bench_optim.py`` as a module."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import bench_optim

    return bench_optim


def optim_section(report: Report, settings: Settings, device: torch.device) -> None:
    report.line(f"## 4. Optimizers on ResNet-20, batch {settings.optim_batch}\n")
    report.line(
        "(a) `benchmarks/bench_optim.py` (imported; its `main` given ResNet-20 built by "
        "`build_model('resnet20')` as the model), train mode, "
        f"{settings.optim_windows} windows of {settings.optim_refresh_every} steps:\n"
    )
    arguments = ["--device", str(device), "--batch-size", str(settings.optim_batch),
                 "--windows", str(settings.optim_windows),
                 "--refresh-every", str(settings.optim_refresh_every),
                 "--threads", str(torch.get_num_threads()), "--mask-probes", "0"]
    if report.over_budget():
        report.line(f"bench_optim: {SKIPPED}\n")
        return
    captured = io.StringIO()
    try:
        shapes = image_task(1)
        with contextlib.redirect_stdout(captured):
            import_bench_optim().main(
                arguments, make_model=lambda: build_model("resnet20", shapes, seed=0),
                model_name="ResNet-20")
        for text in captured.getvalue().splitlines():
            report.line(text)
    except Exception as error:
        traceback.print_exc()
        report.line(f"bench_optim {' '.join(arguments)}: {failure_text(error)}")
    release(device)
    report.line()
    if report.over_budget():
        report.line(f"(b) float16 GradScaler recipe: {SKIPPED}\n")
        return
    grad_scaler_checks(report, settings, device)
    release(device)
    if report.over_budget():
        report.line(f"(c) precision step times: {SKIPPED}\n")
        return
    precision_step_times(report, settings, device)


def sam_for(model: nn.Module) -> SAM:
    return SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9,
               weight_decay=5e-4)


def snapshot(model: nn.Module, optimizer: SAM) -> list[torch.Tensor]:
    """Parameters and every tensor of the base optimizer's state, copied."""
    tensors = [p.detach().clone() for p in model.parameters()]
    for state in optimizer.base_optimizer.state.values():
        tensors += [v.detach().clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def poison(model: nn.Module) -> None:
    """An inf in the first gradient entry, as an overflow in a float16 backward pass leaves."""
    first = next(p for p in model.parameters() if p.grad is not None)
    first.grad.view(-1)[0] = float("inf")


def scaled_sam_step(model, loss_fn, batch, optimizer, scaler, device, inject: str | None) -> None:
    """One SAM step exactly as the float16 recipe of docs/optim.md, with an optional inf."""
    inputs, targets = batch
    with torch.autocast(device.type, dtype=torch.float16):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    if inject == "first pass":
        poison(model)
    optimizer.first_step(zero_grad=True, grad_scaler=scaler)
    with torch.autocast(device.type, dtype=torch.float16), disable_running_stats(model):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    if inject == "second pass":
        poison(model)
    optimizer.second_step(zero_grad=True, grad_scaler=scaler)
    scaler.update()


def grad_scaler_checks(report: Report, settings: Settings, device: torch.device) -> None:
    report.line("(b) float16 autocast + `torch.amp.GradScaler` SAM recipe (docs/optim.md), "
                f"ResNet-20 in train mode, batch {settings.optim_batch}. Expected: an injected "
                "inf is skipped with parameters and SGD momentum bit-identical and the scale "
                "halved; a clean step updates the parameters (a clean step may also be skipped "
                "by a real float16 overflow, which the row then shows).\n")
    case = Case("ResNet-20", "resnet20", image_task(settings.optim_batch))
    model = build_model("resnet20", case.data).to(device).train()
    loss_fn = loss_for(case.data)
    batch = (case.data.train_inputs.to(device), case.data.train_targets.to(device))
    optimizer = sam_for(model)
    scaler = torch.amp.GradScaler(device.type)
    rows = []
    plan = [None, None, "first pass", "second pass", None]
    for number, inject in enumerate(plan, start=1):
        before, scale_before = snapshot(model, optimizer), scaler.get_scale()
        try:
            scaled_sam_step(model, loss_fn, batch, optimizer, scaler, device, inject)
        except Exception as error:
            traceback.print_exc()
            rows.append([str(number), inject or "none", failure_text(error), "-", "-", "-"])
            break
        after = snapshot(model, optimizer)
        # momentum buffers appear after the first step that goes through
        unchanged = len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
        skipped = bool(optimizer.skipped_last_step)
        scale_after = scaler.get_scale()
        if inject is None:
            verdict = "as documented" if skipped == unchanged else "NOT as documented"
        else:
            verdict = ("as documented" if skipped and unchanged and scale_after == scale_before / 2
                       else "NOT as documented")
        rows.append([str(number), inject or "none", "skipped" if skipped else "not skipped",
                     "yes" if unchanged else "no", f"{scale_before:g} -> {scale_after:g}", verdict])
    report.table(["step", "inf injected into", "skipped_last_step", "parameters and state unchanged",
                  "scale", "verdict"], rows, right_from=6)


def precision_step_times(report: Report, settings: Settings, device: torch.device) -> None:
    """Median SAM step time in float32, float16 + GradScaler and bfloat16 autocast, in turns."""
    case = Case("ResNet-20", "resnet20", image_task(settings.optim_batch))
    loss_fn = loss_for(case.data)
    batch = (case.data.train_inputs.to(device), case.data.train_targets.to(device))
    inputs, targets = batch

    def plain_step(model, optimizer, dtype):
        def forward():
            if dtype is None:
                return loss_fn(model(inputs), targets)
            with torch.autocast(device.type, dtype=dtype):
                return loss_fn(model(inputs), targets)

        forward().backward()
        optimizer.first_step(zero_grad=True)
        with disable_running_stats(model):
            forward().backward()
        optimizer.second_step(zero_grad=True)

    steps = {}
    for label, dtype in (("float32", None), ("float16 + GradScaler", torch.float16),
                         ("bfloat16 autocast", torch.bfloat16)):
        model = build_model("resnet20", case.data).to(device).train()
        optimizer = sam_for(model)
        if dtype is torch.float16:
            scaler = torch.amp.GradScaler(device.type)
            steps[label] = (lambda m=model, o=optimizer, s=scaler:
                            scaled_sam_step(m, loss_fn, batch, o, s, device, None))
        else:
            steps[label] = lambda m=model, o=optimizer, d=dtype: plain_step(m, o, d)
    times = time_in_turns(steps, settings.repeats, device)
    base = times["float32"]
    rows = [[label, "-" if isinstance(t, str) else f"{1e3 * t:.2f}",
             t if isinstance(t, str) else ("-" if isinstance(base, str) else f"{t / base:.2f}")]
            for label, t in times.items()]
    report.line(f"(c) One SAM step (two forward-backward passes), median of {settings.repeats}, "
                "in turns:\n")
    report.table(["precision", "SAM step (ms)", "ratio to float32"], rows)


# ---------------------------------------------------------------------------------- 3. compile
def functional_forward_over_reverse(model: nn.Module, loss_fn, batch) -> Callable:
    """``hvp(primals, tangents)``: :math:`Hv` by ``jvp`` over ``grad`` of ``functional_call``."""
    names = [name for name, _ in model.named_parameters()]
    buffers = dict(model.named_buffers())
    inputs, targets = batch

    def loss_at(values):
        outputs = torch.func.functional_call(model, {**buffers, **dict(zip(names, values))}, (inputs,))
        return loss_fn(outputs, targets)

    def hvp(primals, tangents):
        return torch.func.jvp(torch.func.grad(loss_at), (primals,), (tangents,))[1]

    return hvp


def compile_variants(model, loss_fn, batch, vector) -> dict[str, Callable[[], Callable[[], Any]]]:
    """Each compiled variant as a builder returning the call to time (built after a dynamo reset)."""
    primals = tuple(p.detach() for p in model.parameters())
    tangents = tuple(piece.view_as(p) for piece, p in
                     zip(torch.split(vector, [p.numel() for p in primals]), primals))

    def compiled_function():
        compiled = torch.compile(functional_forward_over_reverse(model, loss_fn, batch))
        return lambda: flatten(compiled(primals, tangents))

    def compiled_model(method):
        def build():
            H = HessianOperator(torch.compile(model), loss_fn, batch, method=method)
            return lambda: H @ vector
        return build

    return {
        "torch.compile(forward-over-reverse function)": compiled_function,
        "HessianOperator(torch.compile(model)), forward-over-reverse": compiled_model("forward-over-reverse"),
        "HessianOperator(torch.compile(model)), double-backward": compiled_model("double-backward"),
    }


def dynamo_counts(reset: bool = False) -> str:
    """Graphs dynamo compiled and graph breaks it met since the last reset, as ``"g / b"``."""
    try:
        from torch._dynamo.utils import counters
    except Exception:
        return "?"
    if reset:
        counters.clear()
        return ""
    return f"{counters['stats']['unique_graphs']} / {sum(counters['graph_break'].values())}"


def compile_section(report: Report, settings: Settings, device: torch.device) -> None:
    label = {"resnet20": "ResNet-20", "resnet56": "ResNet-56"}.get(settings.compile_model,
                                                                   settings.compile_model)
    case = Case(label, settings.compile_model, image_task(settings.compile_batch),
                dict(settings.compile_options))
    model, loss_fn, batch = case.build(device)
    dim = sum(p.numel() for p in trainable_parameters(model))
    vector, _ = random_vectors(dim, device)
    eager_cached = HessianOperator(model, loss_fn, batch)
    eager_forward = HessianOperator(model, loss_fn, batch, method="forward-over-reverse")
    reference = eager_cached @ vector
    try:  # the graph cache would turn a second run's compile time into a cache hit
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False
    except Exception:
        pass
    calls: dict[str, Callable[[], Any]] = {
        "eager double-backward, cached graph (HessianOperator default)": lambda: eager_cached @ vector,
        "eager forward-over-reverse (HessianOperator)": lambda: eager_forward @ vector,
    }
    first_call: dict[str, str] = {name: "-" for name in calls}
    difference: dict[str, str] = {name: f"{relative_difference(call(), reference):.1e}"
                                  for name, call in calls.items()}
    failed: dict[str, str] = {}
    compiled: dict[str, str] = {name: "-" for name in calls}
    for name, build in compile_variants(model, loss_fn, batch, vector).items():
        if report.over_budget():
            failed[name] = SKIPPED
            continue
        torch._dynamo.reset()
        dynamo_counts(reset=True)
        try:
            call = build()
            result, seconds = timed(call, device)
            first_call[name] = f"{seconds:.1f}"
            compiled[name] = dynamo_counts()
            difference[name] = f"{relative_difference(result, reference):.1e}"
            calls[name] = call
        except Exception as error:  # compiling a transform may be unsupported: report it
            traceback.print_exc()
            failed[name] = failure_text(error)
            release(device)
    times = time_in_turns(calls, settings.repeats, device)
    forward_base = times["eager forward-over-reverse (HessianOperator)"]
    cached_base = times["eager double-backward, cached graph (HessianOperator default)"]
    rows = []
    for name, value in times.items():
        if isinstance(value, str):
            rows.append([name, compiled.get(name, "-"), first_call.get(name, "-"), value,
                         "-", "-", "-"])
            continue
        rows.append([name, compiled[name], first_call[name], f"{1e3 * value:.2f}",
                     "-" if isinstance(forward_base, str) else f"{value / forward_base:.2f}",
                     "-" if isinstance(cached_base, str) else f"{value / cached_base:.2f}",
                     difference[name]])
    rows += [[name, "-", "-", text, "-", "-", "-"] for name, text in failed.items()]
    options = "".join(f", {k}={v}" for k, v in case.options.items())
    report.line(f"## 3. torch.compile, {case.label}{options}, batch {case.batch_size}, one product\n")
    report.line(f"{dim} parameters, eval mode, float32. 'first call' is the wall time of the first "
                "product, compilation included (fresh dynamo state, inductor's graph cache off); "
                "'graphs / graph breaks' are dynamo's counts over that call (0 graphs: nothing "
                "was compiled, the call ran eagerly); "
                f"steady time is the median of {settings.repeats} products in turns with the eager "
                "ones. Last column: relative difference from the eager double-backward product.\n")
    report.table(["variant", "graphs / graph breaks", "first call (s)", "steady (ms per product)",
                  "vs eager forward-over-reverse", "vs eager double-backward",
                  "rel. diff."], rows)


# ---------------------------------------------------------------------------------- main
def header(report: Report, device: torch.device, quick: bool, args) -> None:
    report.line("# samhess GPU figures\n")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cuda = torch.version.cuda or "-"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "-"
    report.line(
        f"device {device} ({name}), torch {torch.__version__}, CUDA {cuda}, cuDNN {cudnn}, "
        f"CPU threads {torch.get_num_threads()}, python {sys.version.split()[0]}, "
        f"{'--quick' if quick else 'full run'}, repeats {args.repeats}, "
        f"TF32 {'on' if args.tf32 else 'off'} (cudnn.allow_tf32="
        f"{torch.backends.cudnn.allow_tf32}, cuda.matmul.allow_tf32="
        f"{torch.backends.cuda.matmul.allow_tf32}), cudnn.benchmark "
        f"{torch.backends.cudnn.benchmark}, time budget {args.budget_s:.0f} s\n"
    )


class _OneLineErrors(argparse.ArgumentParser):
    """Bad options end with one line on stderr and exit status 2, without the usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"bench_gpu: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _OneLineErrors(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny batches and few repetitions: checks that everything runs")
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timing rounds per median (default 11, --quick 3)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds after which remaining items are skipped (default 330, --quick 110)")
    parser.add_argument("--tf32", action="store_true", help="leave TF32 on for every table")
    args = parser.parse_args(argv)

    fail = parser.error
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        fail(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.type not in ("cpu", "cuda"):
        fail(f"--device must be cpu, cuda or cuda:N, got {str(args.device)!r}")
    if args.device.type == "cuda":
        if not torch.cuda.is_available():
            fail("--device cuda asked for, but torch.cuda.is_available() is False")
        if args.device.index is None:
            args.device = torch.device("cuda", torch.cuda.current_device())
        if args.device.index >= torch.cuda.device_count():
            fail(f"--device {args.device} asked for, but only {torch.cuda.device_count()} "
                 "CUDA device(s) are visible")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        fail(f"--sections must be a comma-separated subset of {','.join(SECTIONS)}, "
             f"got {','.join(unknown) or 'nothing'}")
    if args.repeats is not None and args.repeats < 1:
        fail(f"--repeats must be at least 1, got {args.repeats}")
    if args.budget_s is not None and args.budget_s <= 0:
        fail(f"--budget-s must be positive, got {args.budget_s}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = args.device
    settings = QUICK if args.quick else FULL
    if args.repeats is not None:
        settings = dataclasses.replace(settings, repeats=args.repeats)
    if args.budget_s is not None:
        settings = dataclasses.replace(settings, budget_s=args.budget_s)
    args.repeats, args.budget_s = settings.repeats, settings.budget_s
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32

    try:
        report = Report(args.out, settings.budget_s)
    except OSError as error:
        print(f"bench_gpu: cannot write --out {args.out!r}: {error.strerror}", file=sys.stderr)
        return 2
    header(report, device, args.quick, args)
    sections = {"products": products_section, "eigen": eigen_section,
                "optim": optim_section, "compile": compile_section}
    crashed = []
    for name in SECTIONS:
        if name not in args.sections:
            continue
        started = report.elapsed()
        try:
            sections[name](report, settings, device)
        except Exception as error:  # one section's failure must not cost the others
            traceback.print_exc()
            report.line(f"section {name}: {failure_text(error)}\n")
            crashed.append(name)
        release(device)
        report.line(f"_section {name}: {report.elapsed() - started:.1f} s_\n")
    report.line(f"total wall time {report.elapsed():.1f} s"
                + (f"; sections that stopped early: {', '.join(crashed)}" if crashed else ""))
    report.close()
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
