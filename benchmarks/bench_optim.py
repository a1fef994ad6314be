"""Cost of SAM and IRE relative to their base optimizers, from one run on one model and batch.

Every configuration trains the same small CNN with BatchNorm on the same batch; a "step" is the
whole training step (forward, backward, optimizer), since that is what SAM doubles. Steps are
timed in windows of ``--refresh-every`` steps (CPU: process CPU time on one thread, so that
other processes' load does not enter; CUDA: wall time between synchronizations), the
configurations taking turns window by window; each window holds exactly one IRE mask
refresh, so its mean is the amortized cost of a step with "refresh every k". The table gives
medians over windows.

IRE refreshes its mask from ``samhess.curvature.fisher_diagonal`` (sampled-label Fisher
diagonal, one sample) when that module is importable; otherwise from a stand-in of the same
cost (one forward-backward with labels drawn from the model's softmax, gradient squared), and
the output says which. "IRE" estimates on the whole training batch, "IRE/4" on a quarter of it:
an estimate costs about one forward-backward, so with refresh every 10 steps the whole-batch
estimate alone adds about 10% to every step.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the torch profiler
(``profile_memory=True``): the largest running sum of its allocation/free events over building
the model and optimizer and taking three steps (the batch is allocated before). Both count
parameters, gradients, optimizer state and activations.

Run: ``python benchmarks/bench_optim.py`` (about a minute on one CPU thread).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from samhess.optim import IRE, SAM, disable_running_stats

SAM_TARGET = 2.05
IRE_TARGET = 1.10


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

        return estimate, "samhess.curvature.fisher_diagonal (num_samples=1, training batch)"

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
    """One configuration: a fresh model (``make_model()``) and optimizer, and its training step."""

    def __init__(self, name: str, batch, estimate: Callable, refresh_every: int,
                 make_model: Callable[[], nn.Module] = small_cnn) -> None:
        self.name, self.batch, self.estimate = name, batch, estimate
        # "IRE/4": the mask refresh estimates the diagonal on a quarter of the batch
        self.refresh_batch = batch if not name.endswith("/4") else tuple(
            t[: max(1, len(t) // 4)] for t in batch)
        name = name.removesuffix("/4")
        device = batch[0].device
        self.model = make_model().to(device)
        self.loss_fn = nn.CrossEntropyLoss()
        params = self.model.parameters()
        sgd = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
        if name == "SGD":
            self.optimizer = torch.optim.SGD(params, **sgd)
        elif name == "SAM":
            self.optimizer = SAM(params, torch.optim.SGD, rho=0.05, **sgd)
        elif name == "IRE":
            self.optimizer = IRE(torch.optim.SGD(params, **sgd), kappa=1.0, gamma=0.6,
                                 refresh_every=refresh_every)
        elif name == "SAM-IRE":
            self.optimizer = IRE(SAM(params, torch.optim.SGD, rho=0.05, **sgd), kappa=1.0,
                                 gamma=0.6, refresh_every=refresh_every)
        else:
            raise ValueError(name)
        self.two_pass = name in ("SAM", "SAM-IRE")

    def step(self) -> None:
        model, loss_fn, optimizer = self.model, self.loss_fn, self.optimizer
        x, y = self.batch
        if isinstance(optimizer, IRE) and optimizer.needs_refresh():
            optimizer.update_mask(self.estimate(model, loss_fn, self.refresh_batch))
        loss_fn(model(x), y).backward()
        if self.two_pass:
            optimizer.first_step(zero_grad=True)
            with disable_running_stats(model):
                loss_fn(model(x), y).backward()
            optimizer.second_step(zero_grad=True)
        else:
            optimizer.step()
            optimizer.zero_grad()


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
    device = batch[0].device
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        trainer = Trainer(name, batch, estimate, refresh_every, make_model)
        for _ in range(3):
            trainer.step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer = Trainer(name, batch, estimate, refresh_every, make_model)
        for _ in range(3):
            trainer.step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def main(argv: list[str] | None = None, *, make_model: Callable[[], nn.Module] = small_cnn,
         model_name: str = "CNN") -> int:
    """Run the benchmark; ``make_model`` builds each configuration's model (``model_name`` labels
    it in the output), so other scripts can measure the same thing on another network."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--windows", type=int, default=9, help="timed windows per configuration")
    parser.add_argument("--refresh-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: ratios stay stable on a shared machine)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, 3, 32, 32, generator=generator).to(device),
             torch.randint(0, 10, (args.batch_size,), generator=generator).to(device))
    estimate, estimate_source = diagonal_estimator()
    names = ["SGD", "SAM", "IRE", "IRE/4", "SAM-IRE"]
    trainers = {name: Trainer(name, batch, estimate, args.refresh_every, make_model)
                for name in names}

    for trainer in trainers.values():  # warm-up window: allocator, lazy state, first refresh
        for _ in range(args.refresh_every):
            trainer.step()
    # CPU: this process's CPU time, which other processes' load on a shared machine barely
    # touches (one thread, so it equals compute time); CUDA: wall time between synchronizations.
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    window_means: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.windows):
        for name, trainer in trainers.items():
            synchronize(device)
            start = clock()
            for _ in range(args.refresh_every):
                trainer.step()
            synchronize(device)
            window_means[name].append((clock() - start) / args.refresh_every)
    median = {name: statistics.median(times) for name, times in window_means.items()}
    memory = {name: peak_memory(name, batch, estimate, args.refresh_every, make_model)
              for name in names}

    ratios = {
        "SGD": ("-", None),
        "SAM": (median["SAM"] / median["SGD"], SAM_TARGET),
        "IRE": (median["IRE"] / median["SGD"], IRE_TARGET),
        "IRE/4": (median["IRE/4"] / median["SGD"], IRE_TARGET),
        "SAM-IRE": (median["SAM-IRE"] / median["SAM"], IRE_TARGET),
    }
    bases = {"SGD": "-", "SAM": "SGD", "IRE": "SGD", "IRE/4": "SGD", "SAM-IRE": "SAM"}
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    parameters = sum(p.numel() for p in trainers["SGD"].model.parameters())
    print(f"device {device}, torch {torch.__version__}, threads {threads}, batch "
          f"{args.batch_size}x3x32x32, {model_name} with {parameters} parameters, "
          f"{args.windows} windows of {args.refresh_every} steps per configuration")
    print(f"IRE diagonal: {estimate_source}; refresh every {args.refresh_every} steps, "
          "included in the IRE timings; IRE/4 estimates it on a quarter of the batch")
    print("time: " + ("process CPU time (time.process_time)" if device.type == "cpu"
                      else "wall time between CUDA synchronizations")
          + "; memory: " + ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                            else "torch.profiler (profile_memory=True) peak of live tensors"))
    print()
    print("| optimizer | median step (ms) | base | ratio to base | target | peak memory (MiB) "
          "| memory ratio to base |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for name in names:
        ratio, target = ratios[name]
        base = bases[name]
        ratio_text = "-" if target is None else f"{ratio:.3f}"
        verdict = "met" if target is not None and ratio <= target else "missed"
        target_text = "-" if target is None else f"<= {target:.2f} ({verdict})"
        memory_ratio = "-" if base == "-" else f"{memory[name] / memory[base]:.3f}"
        print(f"| {name} | {1e3 * median[name]:.2f} | {base} | {ratio_text} | {target_text} | "
              f"{memory[name] / 2**20:.2f} | {memory_ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
