"""Cost of SAM, its variants and IRE relative to their bases, from one run on one model and batch.

Every configuration trains the same small CNN with BatchNorm on the same batch; a "step" is the
whole training step (forward, backward, optimizer), since that is what SAM doubles. Steps are
timed one by one (CPU: process CPU time on one thread, so that other processes' load does not
enter; CUDA: wall time between synchronizations), the configurations taking turns window by
window of ``--refresh-every`` steps, in an order that rotates every round; each window holds
exactly one IRE mask refresh and, with ``--refresh-every`` a multiple of 5, exactly two of
LookSAM's (k = 5) SAM steps, so a window's mean is the amortized cost of a step. The table gives
medians over windows, of the whole step and of the optimizer's own work in it (everything but the training loss's forward and backward
passes: the optimizer's calls, BSAM's noise, IRE's mask refresh), which shows what an
optimizer adds beyond its passes even when other processes' load blurs the ratios. The ratio to
the base is the median over rounds of the round's ratio (windows measured moments apart, so
changes of the machine's load between rounds cancel) ± half the interquartile range of those
ratios.

Bases and targets (the optimizers issue): the two-pass optimizers (SAM, USAM, ASAM, GSAM, WSAM,
FriendlySAM, BSAM) against SGD, at most 2.05x; LookSAM (k = 5) against SGD, at most 1.3x; MSAM
(m = 4) against SGD accumulating the gradient over the same 4 micro-batches ("SGD/4"), at most
2.05x; IRE against SGD and SAM-IRE against SAM, at most 1.05x (issue 15). RST (p = 0.5) against the mix
(1 - p) SGD + p SAM, at most 1.05x: its SAM steps and its base steps are timed apart, and its
cost at probability p is (1 - p) x median(base steps) + p x median(SAM steps), which leaves out
how many SAM steps the draws happened to give; the median over windows (draws included) is
printed beside it.

IRE refreshes its mask from ``samhess.curvature.fisher_diagonal`` (sampled-label Fisher
diagonal, one sample) when that module is importable; otherwise from a stand-in of the same
cost (one forward-backward with labels drawn from the model's softmax, gradient squared), and
the output says which. "IRE" and "SAM-IRE" estimate on ``IRE.refresh_batch`` of the training
batch (the default: its leading quarter), "IRE/whole" on the whole batch: an estimate costs
about one forward-backward, so with refresh every 10 steps the whole-batch estimate alone adds
about 10% to every step, the default quarter about 2.5%.

Mask quality (second table): does the quarter-batch estimate pick as good a mask? On the CLI's
default task (the digits MLP 64-64-32-10, ReLU, after 300 SGD steps, gamma 0.8) and on this
CNN at initialization on random images (gamma 0.6), the top-5 Hessian eigenvectors on 512
examples are the sharp directions; for ``--mask-probes`` random training batches of 64, masks
from the whole-batch and from the default (quarter) estimate are scored by
``samhess.analysis.ire_mask_quality``: the mean mass of the sharp eigenvectors on the mask
(lower is better; a random mask gives gamma). The default passes when its mean is at most
``MASK_MARGIN`` above the whole-batch estimate's.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the torch profiler
(``profile_memory=True``): the largest running sum of its allocation/free events over building
the model and optimizer and taking three steps (the batch is allocated before). Both count
parameters, gradients, optimizer state and activations.

Run: ``python benchmarks/bench_optim.py`` (a few minutes on one CPU thread).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from samhess.optim import (
    ASAM,
    BSAM,
    GSAM,
    IRE,
    MSAM,
    RST,
    SAM,
    USAM,
    WSAM,
    FriendlySAM,
    LookSAM,
    disable_running_stats,
)

TWO_PASS_TARGET = 2.05
LOOKSAM_TARGET = 1.30
RST_TARGET = 1.05
IRE_TARGET = 1.05
MASK_MARGIN = 0.03
RST_PROBABILITY = 0.5
MICRO_BATCHES = 4


@dataclass(frozen=True)
class Configuration:
    """An optimizer of the table: how to build it, its base and its target ratio."""

    build: Callable[[list[nn.Parameter], int], torch.optim.Optimizer]
    base: str | None
    target: float | None


def _sgd_kwargs() -> dict:
    return dict(lr=0.05, momentum=0.9, weight_decay=5e-4)


def _ire(inner: torch.optim.Optimizer, refresh_every: int) -> IRE:
    return IRE(inner, kappa=1.0, gamma=0.6, refresh_every=refresh_every)


CONFIGURATIONS: dict[str, Configuration] = {
    "SGD": Configuration(lambda p, r: torch.optim.SGD(p, **_sgd_kwargs()), None, None),
    "SAM": Configuration(lambda p, r: SAM(p, torch.optim.SGD, rho=0.05, **_sgd_kwargs()),
                         "SGD", TWO_PASS_TARGET),
    "USAM": Configuration(lambda p, r: USAM(p, torch.optim.SGD, rho=0.05, **_sgd_kwargs()),
                          "SGD", TWO_PASS_TARGET),
    "ASAM": Configuration(lambda p, r: ASAM(p, torch.optim.SGD, rho=0.5, **_sgd_kwargs()),
                          "SGD", TWO_PASS_TARGET),
    "GSAM": Configuration(lambda p, r: GSAM(p, torch.optim.SGD, rho=0.05, alpha=0.4,
                                            **_sgd_kwargs()), "SGD", TWO_PASS_TARGET),
    "WSAM": Configuration(lambda p, r: WSAM(p, torch.optim.SGD, rho=0.05, gamma=0.9,
                                            **_sgd_kwargs()), "SGD", TWO_PASS_TARGET),
    "FriendlySAM": Configuration(lambda p, r: FriendlySAM(p, torch.optim.SGD, rho=0.05,
                                                          **_sgd_kwargs()),
                                 "SGD", TWO_PASS_TARGET),
    "LookSAM": Configuration(lambda p, r: LookSAM(p, torch.optim.SGD, rho=0.05, k=5,
                                                  **_sgd_kwargs()), "SGD", LOOKSAM_TARGET),
    "RST": Configuration(lambda p, r: RST(p, torch.optim.SGD, rho=0.05, p=RST_PROBABILITY,
                                          seed=0, **_sgd_kwargs()), "mix", RST_TARGET),
    "BSAM": Configuration(lambda p, r: BSAM(p, num_data=50_000, lr=0.05, seed=0),
                          "SGD", TWO_PASS_TARGET),
    "SGD/4": Configuration(lambda p, r: torch.optim.SGD(p, **_sgd_kwargs()), None, None),
    "MSAM": Configuration(lambda p, r: MSAM(p, torch.optim.SGD, rho=0.05, m=MICRO_BATCHES,
                                            **_sgd_kwargs()), "SGD/4", TWO_PASS_TARGET),
    "IRE": Configuration(lambda p, r: _ire(torch.optim.SGD(p, **_sgd_kwargs()), r),
                         "SGD", IRE_TARGET),
    "IRE/whole": Configuration(lambda p, r: _ire(torch.optim.SGD(p, **_sgd_kwargs()), r),
                               "SGD", None),
    "SAM-IRE": Configuration(lambda p, r: _ire(SAM(p, torch.optim.SGD, rho=0.05,
                                                   **_sgd_kwargs()), r), "SAM", IRE_TARGET),
}


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def diagonal_estimator() -> tuple[Callable, str]:
    """``fisher_diagonal`` if the curvature layer provides it, else a stand-in of equal cost."""
    try:
        from samhess.curvature import fisher_diagonal
    except ImportError:
        fisher_diagonal = None
    if fisher_diagonal is not None:
        def estimate(model, loss_fn, batch):
            return fisher_diagonal(model, loss_fn, batch, num_samples=1)

        return estimate, "samhess.curvature.fisher_diagonal (num_samples=1)"

    def estimate(model, loss_fn, batch):
        inputs, _ = batch
        logits = model(inputs)
        with torch.no_grad():
            sampled = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)
        grads = torch.autograd.grad(loss_fn(logits, sampled), list(model.parameters()))
        return [g * g for g in grads]

    return estimate, ("stand-in: squared gradient of one forward-backward with labels sampled "
                      "from the model (fisher_diagonal not importable)")


class Trainer:
    """One configuration: a fresh model (``make_model()``) and optimizer, and its training step.

    ``own_time`` accumulates the time spent outside the training loss's forward and backward
    passes: the optimizer's calls, BSAM's noise and IRE's mask refresh (its curvature estimate
    included).
    """

    def __init__(self, name: str, batch, estimate: Callable, refresh_every: int,
                 make_model: Callable[[], nn.Module] = small_cnn) -> None:
        self.name, self.batch, self.estimate = name, batch, estimate
        self.device = batch[0].device
        self.model = make_model().to(self.device)
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = CONFIGURATIONS[name].build(list(self.model.parameters()), refresh_every)
        inner = self.optimizer.optimizer if isinstance(self.optimizer, IRE) else self.optimizer
        if isinstance(self.optimizer, IRE):  # "IRE/whole": the estimate sees the whole batch
            self.refresh_batch = batch if name == "IRE/whole" else self.optimizer.refresh_batch(batch)
        self.inner = inner
        self.micro_batches = MICRO_BATCHES if name in ("SGD/4", "MSAM") else 1
        self.clock = time.process_time if self.device.type == "cpu" else time.perf_counter
        self.own_time = 0.0

    def _own(self, call: Callable, *args, **kwargs):
        synchronize(self.device)
        start = self.clock()
        result = call(*args, **kwargs)
        synchronize(self.device)
        self.own_time += self.clock() - start
        return result

    def _loss(self, index: int | None = None) -> torch.Tensor:
        x, y = self.batch
        if index is not None:
            x, y = x.chunk(self.micro_batches)[index], y.chunk(self.micro_batches)[index]
        return self.loss_fn(self.model(x), y)

    def _second_pass(self, index: int | None = None) -> None:
        with disable_running_stats(self.model):
            self._loss(index).backward()

    def _refresh(self) -> None:
        self.optimizer.update_mask(self.estimate(self.model, self.loss_fn, self.refresh_batch))

    def step(self) -> bool:
        """One training step; whether it took two forward-backward passes per (micro-)batch."""
        optimizer, inner = self.optimizer, self.inner
        if isinstance(optimizer, IRE) and optimizer.needs_refresh():
            self._own(self._refresh)
        if isinstance(inner, MSAM):
            for index in range(self.micro_batches):
                self._loss(index).backward()
                self._own(optimizer.first_step, zero_grad=True)
                self._second_pass(index)
                self._own(optimizer.second_step, zero_grad=True)
            return True
        if not isinstance(inner, SAM):
            for index in range(self.micro_batches):
                if self.micro_batches == 1:
                    self._loss().backward()
                else:
                    (self._loss(index) / self.micro_batches).backward()
            self._own(optimizer.step)
            self._own(optimizer.zero_grad)
            return False
        if isinstance(inner, BSAM):
            noise = inner.noisy_weights()
            self._own(noise.__enter__)
            self._loss().backward()
            self._own(noise.__exit__, None, None, None)
        else:
            self._loss().backward()
        two_pass = self._own(optimizer.first_step, zero_grad=True)
        if two_pass:
            self._second_pass()
        self._own(optimizer.second_step, zero_grad=True)
        return two_pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet_stderr():
    """The CPU profiler's backend prints start/stop lines on file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(name: str, batch, estimate: Callable, refresh_every: int,
                make_model: Callable[[], nn.Module] = small_cnn) -> int:
    """Peak bytes of live tensors while building ``name`` and taking three steps."""

    def build_and_step() -> None:
        trainer = Trainer(name, batch, estimate, refresh_every, make_model)
        for _ in range(3):
            trainer.step()

    return peak_bytes(build_and_step, batch[0].device)


def peak_bytes(function: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of the tensors ``function()`` allocates that are live at once.

    CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before; CPU: the torch
    profiler's allocation and free events (``profile_memory=True``), summed in time order.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        function()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        function()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def ratio_rows(names: list[str], window_means: dict[str, list[float]], rst_cost: float | None,
               rst_mix: float | None) -> dict[str, tuple[float, float | None] | None]:
    """Each configuration's step time over its base's, with its noise (RST: its cost at p over
    the mix, no noise).

    Each round's ratio compares windows measured moments apart, so a change of the machine's
    load between rounds cancels; the ratio is the median over rounds, the noise half the
    interquartile range of the per-round ratios.
    """
    ratios: dict[str, tuple[float, float | None] | None] = {}
    for name in names:
        base = CONFIGURATIONS[name].base
        if base is None:
            ratios[name] = None
        elif base == "mix":
            ratios[name] = None if rst_cost is None else (rst_cost / rst_mix, None)
        else:
            per_round = [a / b for a, b in zip(window_means[name], window_means[base])]
            ratios[name] = (statistics.median(per_round), quartile_half_range(per_round))
    return ratios


def quartile_half_range(values: list[float]) -> float:
    """Half the interquartile range of ``values`` (half the range for fewer than four)."""
    if len(values) < 4:
        return (max(values) - min(values)) / 2
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / 2


def main(argv: list[str] | None = None, *, make_model: Callable[[], nn.Module] = small_cnn,
         model_name: str = "CNN") -> int:
    """Run the benchmark; ``make_model`` builds each configuration's model (``model_name`` labels
    it in the output), so other scripts can measure the same thing on another network."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--windows", type=int, default=21, help="timed windows per configuration")
    parser.add_argument("--refresh-every", type=int, default=10)
    parser.add_argument("--mask-probes", type=int, default=20,
                        help="training batches scored in the mask-quality table (0: no table)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: ratios stay stable on a shared machine)")
    parser.add_argument("--optimizers", default=",".join(CONFIGURATIONS),
                        help="comma-separated configurations (default: all); each one's base "
                             "is added")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    requested = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    unknown = [name for name in requested if name not in CONFIGURATIONS]
    if unknown:
        parser.error(f"unknown optimizers {unknown}; choose from {', '.join(CONFIGURATIONS)}")
    wanted = set(requested)
    for name in requested:
        base = CONFIGURATIONS[name].base
        wanted.update(("SGD", "SAM") if base == "mix" else () if base is None else (base,))
    names = [name for name in CONFIGURATIONS if name in wanted]

    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, 3, 32, 32, generator=generator).to(device),
             torch.randint(0, 10, (args.batch_size,), generator=generator).to(device))
    estimate, estimate_source = diagonal_estimator()
    trainers = {name: Trainer(name, batch, estimate, args.refresh_every, make_model)
                for name in names}

    for trainer in trainers.values():  # warm-up window: allocator, lazy state, first refresh
        for _ in range(args.refresh_every):
            trainer.step()
    # CPU: this process's CPU time, which other processes' load on a shared machine barely
    # touches (one thread, so it equals compute time); CUDA: wall time between synchronizations.
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    window_means: dict[str, list[float]] = {name: [] for name in names}
    own_means: dict[str, list[float]] = {name: [] for name in names}
    rst_steps: dict[bool, list[float]] = {True: [], False: []}
    for index in range(args.windows):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            trainer = trainers[name]
            total = 0.0
            trainer.own_time = 0.0
            for _ in range(args.refresh_every):
                synchronize(device)
                start = clock()
                two_pass = trainer.step()
                synchronize(device)
                elapsed = clock() - start
                total += elapsed
                if name == "RST":
                    rst_steps[two_pass].append(elapsed)
            window_means[name].append(total / args.refresh_every)
            own_means[name].append(trainer.own_time / args.refresh_every)
    median = {name: statistics.median(times) for name, times in window_means.items()}
    own = {name: statistics.median(times) for name, times in own_means.items()}
    memory = {name: peak_memory(name, batch, estimate, args.refresh_every, make_model)
              for name in names}
    rst_cost = rst_mix = None
    if "RST" in names:
        p = RST_PROBABILITY
        if rst_steps[True] and rst_steps[False]:
            rst_cost = ((1 - p) * statistics.median(rst_steps[False])
                        + p * statistics.median(rst_steps[True]))
        rst_mix = (1 - p) * median["SGD"] + p * median["SAM"]
    ratios = ratio_rows(names, window_means, rst_cost, rst_mix)

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    parameters = sum(p.numel() for p in trainers[names[0]].model.parameters())
    print(f"device {device}, torch {torch.__version__}, threads {threads}, batch "
          f"{args.batch_size}x3x32x32, {model_name} with {parameters} parameters, "
          f"{args.windows} windows of {args.refresh_every} steps per configuration")
    if any(name.startswith("IRE") or name.endswith("IRE") for name in names):
        print(f"IRE diagonal: {estimate_source}; refresh every {args.refresh_every} steps, "
              "included in the IRE timings; IRE and SAM-IRE estimate it on IRE.refresh_batch "
              "(the default leading quarter of the batch), IRE/whole on the whole batch")
    print("time: " + ("process CPU time (time.process_time)" if device.type == "cpu"
                      else "wall time between CUDA synchronizations")
          + "; memory: " + ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                            else "torch.profiler (profile_memory=True) peak of live tensors"))
    print(f"settings: SGD lr 0.05, momentum 0.9, weight decay 5e-4 under every SGD-based "
          f"optimizer; rho 0.05 (ASAM 0.5, BSAM 0.01); LookSAM k=5; RST p={RST_PROBABILITY}; "
          f"MSAM and SGD/4 over {MICRO_BATCHES} micro-batches of the batch")
    print()
    print("| optimizer | median step (ms) | own work (ms) | base | ratio to base ± noise | target "
          "| peak memory (MiB) | memory ratio to base |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for name in names:
        configuration = CONFIGURATIONS[name]
        base, target, ratio = configuration.base, configuration.target, ratios[name]
        base_text = "-" if base is None else (
            f"{1 - RST_PROBABILITY:g} SGD + {RST_PROBABILITY:g} SAM" if base == "mix" else base)
        if base is None:
            ratio_text = target_text = "-"
        elif ratio is None:
            ratio_text, target_text = "n/a", f"<= {target:.2f} (not measured)"
        else:
            value, noise = ratio
            ratio_text = f"{value:.3f}" + ("" if noise is None else f" ± {noise:.3f}")
            target_text = "-" if target is None else (
                f"<= {target:.2f} ({'met' if value <= target else 'missed'})")
        memory_base = "SGD" if base == "mix" else base
        memory_ratio = "-" if base is None else f"{memory[name] / memory[memory_base]:.3f}"
        print(f"| {name} | {1e3 * median[name]:.2f} | {1e3 * own[name]:.2f} | {base_text} | "
              f"{ratio_text} | "
              f"{target_text} | {memory[name] / 2**20:.2f} | {memory_ratio} |")
    if "RST" in names:
        def summary(times: list[float]) -> str:
            return f"{len(times)} (median {1e3 * statistics.median(times):.2f} ms)" if times \
                else "0"

        print()
        print(f"RST: {summary(rst_steps[True])} SAM steps and {summary(rst_steps[False])} base "
              "steps drawn in the timed windows; median window over the mix, draws included: "
              f"{median['RST'] / rst_mix:.3f}")
    if args.mask_probes > 0:
        print()
        mask_quality_table(args.mask_probes)
    return 0


def digits_mlp_after_sgd(steps: int = 300) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The CLI's default model and data (digits MLP 64-64-32-10, ReLU) after ``steps`` SGD steps."""
    from sklearn.datasets import load_digits

    from samhess.experiments.models.mlp import MLP

    digits = load_digits()
    inputs = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    targets = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = MLP(64, 10, (64, 32), "relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        chosen = torch.randint(0, len(inputs), (64,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs[chosen]), targets[chosen]).backward()
        optimizer.step()
    return model.eval(), inputs, targets


def mask_quality_table(probes: int, batch_size: int = 64, k: int = 5) -> bool:
    """Sharp eigenvectors' mass on masks from whole-batch and default (quarter) estimates."""
    from samhess.analysis import ire_mask_quality
    from samhess.curvature import HessianOperator, eigenpairs, fisher_diagonal
    from samhess.optim import flattest_coordinates_mask

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(512, 3, 32, 32, generator=generator)
    problems = {
        "digits MLP, 300 SGD steps": (*digits_mlp_after_sgd(), 0.8),
        "CNN at initialization, random images": (
            small_cnn().eval(), images, torch.randint(0, 10, (512,), generator=generator), 0.6),
    }
    print(f"Mask quality: mean mass of the top-{k} Hessian eigenvectors (512 examples) on the "
          f"mask, over {probes} training batches of {batch_size}; lower is better, a random mask "
          f"gives gamma. Margin for the default: {MASK_MARGIN}.")
    print()
    print("| model | params | gamma | whole batch | default (quarter) | default - whole | verdict |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    passed = True
    loss_fn = nn.CrossEntropyLoss()
    for label, (model, inputs, targets, gamma) in problems.items():
        params = list(model.parameters())
        top = eigenpairs(HessianOperator(model, loss_fn, (inputs[:512], targets[:512])), k)
        refresh = IRE(torch.optim.SGD(params, lr=0.0), kappa=1.0, gamma=gamma)
        masses: dict[str, list[float]] = {"whole": [], "default": []}
        draws = torch.Generator().manual_seed(1)
        for _ in range(probes):
            chosen = torch.randperm(len(inputs), generator=draws)[:batch_size]
            batch = (inputs[chosen], targets[chosen])
            for name, examples in (("whole", batch), ("default", refresh.refresh_batch(batch))):
                diag = fisher_diagonal(model, loss_fn, examples, params, generator=draws)
                mask = flattest_coordinates_mask(diag, gamma)
                masses[name].append(ire_mask_quality(mask, top).mean_sharp_mass_on_mask)
        whole, default = (statistics.fmean(masses[name]) for name in ("whole", "default"))
        spread = {name: statistics.stdev(values) for name, values in masses.items()}
        ok = default - whole <= MASK_MARGIN
        passed &= ok
        print(f"| {label} | {sum(p.numel() for p in params)} | {gamma} | {whole:.3f} ± "
              f"{spread['whole']:.3f} | {default:.3f} ± {spread['default']:.3f} | "
              f"{default - whole:+.3f} | {'within' if ok else 'beyond'} {MASK_MARGIN} |")
    print()
    print("(± the standard deviation over the training batches)")
    return passed



if __name__ == "__main__":
    raise SystemExit(main())
