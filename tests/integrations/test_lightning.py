"""samhess under PyTorch Lightning, against the plain-PyTorch two-step loop.

Every training test runs the same optimizer on the same batches twice: through ``Trainer.fit``
with :class:`~samhess.integrations.lightning.SharpnessAwareMixin`, and through the loop of
``docs/optim.md`` (``first_step``, second pass under ``disable_running_stats``,
``second_step``). Weights and BatchNorm buffers must agree exactly in float64 and to 1e-6 in
float32; the step count, the logged losses (the loss at w of each step, logged once) and the
hook counts must be those of one step per batch window.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pl = pytest.importorskip("pytorch_lightning", reason="the integrations extra is not installed")

import torch  # noqa: E402
from pytorch_lightning.loggers import Logger  # noqa: E402
from pytorch_lightning.plugins.precision import MixedPrecision, Precision  # noqa: E402
from pytorch_lightning.strategies import SingleDeviceStrategy  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from samhess.curvature import fisher_diagonal  # noqa: E402
from samhess.integrations.lightning import SharpnessAwareMixin  # noqa: E402
from samhess.optim import ASAM, BSAM, IRE, MSAM, SAM, USAM, LookSAM, disable_running_stats  # noqa: E402

BATCH = 16
STEPS = 4


def network(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)
    ).to(dtype)


def dataset(dtype: torch.dtype, size: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(size, 6, generator=generator, dtype=dtype),
                         torch.randint(0, 3, (size,), generator=generator))


loss_fn = nn.functional.cross_entropy


def diagonal(model: nn.Module, batch) -> list[torch.Tensor]:
    return fisher_diagonal(model, loss_fn, batch, list(model.parameters()),
                           generator=torch.Generator().manual_seed(7))


OPTIMIZERS = {
    "sam": lambda params: SAM(params, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
    "usam": lambda params: USAM(params, torch.optim.SGD, rho=0.2, lr=0.1),
    "asam": lambda params: ASAM(params, torch.optim.AdamW, rho=0.5, lr=0.01),
    "ire": lambda params: IRE(torch.optim.SGD(params, lr=0.1, momentum=0.9), kappa=1.0,
                              gamma=0.5, refresh_every=2),
    "sam-ire": lambda params: IRE(SAM(params, torch.optim.SGD, rho=0.05, lr=0.1), kappa=1.0,
                                  gamma=0.5, refresh_every=2),
    # SAM's step at steps 0 and 2, its single-pass step (no pass at w + e) at 1 and 3
    "looksam": lambda params: LookSAM(params, torch.optim.SGD, rho=0.05, k=2, lr=0.1,
                                      momentum=0.9),
}


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call: (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, dict(metrics)))


class Classifier(SharpnessAwareMixin, pl.LightningModule):
    def __init__(self, optimizer: str, dtype: torch.dtype, manual: bool = False) -> None:
        super().__init__()
        self.net = network(dtype)
        self.optimizer_name = optimizer
        self.automatic_optimization = not manual
        self.hook_calls = {"on_before_optimizer_step": 0, "curvature_diagonal": 0,
                           "training_step at w": 0, "training_step at w + e": 0}

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return loss_fn(self.net(x), y)

    def training_step(self, batch, batch_idx):
        self.hook_calls["training_step at w"] += not self.perturbed_pass
        self.hook_calls["training_step at w + e"] += self.perturbed_pass
        if self.automatic_optimization:
            loss = self.loss(batch)
        else:
            opt = self.optimizers()
            loss = self.loss(batch)
            self.manual_backward(loss)
            if opt.first_step(zero_grad=True):
                self.manual_backward(self.loss(batch))
            opt.second_step(zero_grad=True)
        self.log("loss", loss.detach().to(torch.float64))
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.hook_calls["on_before_optimizer_step"] += 1

    def curvature_diagonal(self, batch):
        self.hook_calls["curvature_diagonal"] += 1
        return diagonal(self.net, batch)

    def configure_optimizers(self):
        return OPTIMIZERS[self.optimizer_name](self.parameters())


def fit(module: pl.LightningModule, data: TensorDataset, steps: int = STEPS, **trainer_kwargs):
    logger = RecordingLogger()
    settings = dict(max_steps=steps, logger=logger, log_every_n_steps=1, accelerator="cpu",
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
    settings.update(trainer_kwargs)
    trainer = pl.Trainer(**settings)
    trainer.fit(module, DataLoader(data, batch_size=BATCH))
    return trainer, logger


def reference(optimizer: str, dtype: torch.dtype, data: TensorDataset, steps: int = STEPS,
              accumulate: int = 1, clip=None, autocast=None, scaler=None):
    """The plain two-step loop of docs/optim.md over the same batches; returns (model, losses)."""
    model = network(dtype)
    opt = OPTIMIZERS[optimizer](model.parameters())
    two_pass = isinstance(opt.optimizer if isinstance(opt, IRE) else opt, SAM)
    batches = list(DataLoader(data, batch_size=BATCH))
    losses = []

    def pass_over(window, record):
        for x, y in window:
            with autocast() if autocast else torch.autocast("cpu", enabled=False):
                loss = loss_fn(model(x), y)
            if record:
                losses.append(loss.detach().to(torch.float64))
            scaled = loss / accumulate
            (scaler.scale(scaled) if scaler else scaled).backward()

    for step in range(steps):
        window = batches[step * accumulate:(step + 1) * accumulate]
        if isinstance(opt, IRE) and opt.needs_refresh():
            opt.update_mask(diagonal(model, window[0]))
        pass_over(window, record=True)
        if two_pass and opt.first_step(zero_grad=True, grad_scaler=scaler):
            with disable_running_stats(model):
                pass_over(window, record=False)
        if scaler:
            scaler.unscale_(opt.optimizer if isinstance(opt, IRE) else opt)
        if clip:
            clip(model.parameters())
        if two_pass:
            opt.second_step(zero_grad=True, grad_scaler=scaler)
        elif scaler:
            scaler.step(opt)
            opt.zero_grad()
        else:
            opt.step()
            opt.zero_grad()
        if scaler:
            scaler.update()
    return model, losses


def assert_same_state(module: Classifier, model: nn.Module, atol: float) -> None:
    for (name, ours), theirs in zip(module.net.state_dict().items(), model.state_dict().values()):
        if atol == 0.0:
            assert torch.equal(ours, theirs), name
        else:
            torch.testing.assert_close(ours, theirs, rtol=0.0, atol=atol, msg=name)


def logged_losses(logger: RecordingLogger) -> tuple[list[int], list[torch.Tensor]]:
    steps = [step for step, metrics in logger.records if "loss" in metrics]
    return steps, [torch.tensor(metrics["loss"], dtype=torch.float64)
                   for _, metrics in logger.records if "loss" in metrics]


# IRE over SGD is a one-pass optimizer: manual code steps it as any other, with opt.step()
@pytest.mark.parametrize(
    "optimizer,manual",
    [(name, False) for name in OPTIMIZERS] + [(name, True) for name in OPTIMIZERS if name != "ire"],
)
def test_float64_training_equals_the_two_step_loop_exactly(optimizer, manual):
    data = dataset(torch.float64, BATCH * STEPS)
    module = Classifier(optimizer, torch.float64, manual=manual)
    trainer, logger = fit(module, data, precision="64-true")
    model, losses = reference(optimizer, torch.float64, data)

    assert_same_state(module, model, atol=0.0)
    assert trainer.global_step == STEPS
    steps, logged = logged_losses(logger)
    assert steps == list(range(STEPS))  # once per step, at its own step
    assert all(torch.equal(a, b) for a, b in zip(logged, losses))
    assert module.hook_calls["on_before_optimizer_step"] == STEPS
    assert module.hook_calls["training_step at w"] == STEPS
    if not manual:  # the pass at w + e only on the steps that perturb (LookSAM: every k-th)
        perturbed = {"ire": 0, "looksam": STEPS // 2}.get(optimizer, STEPS)
        assert module.hook_calls["training_step at w + e"] == perturbed
    if optimizer in ("ire", "sam-ire"):
        assert module.hook_calls["curvature_diagonal"] == STEPS // 2  # refresh_every=2


@pytest.mark.parametrize("optimizer", ["sam", "sam-ire"])
def test_float32_training_agrees_with_the_two_step_loop(optimizer):
    data = dataset(torch.float32, BATCH * STEPS)
    module = Classifier(optimizer, torch.float32)
    fit(module, data, precision="32-true")
    model, _ = reference(optimizer, torch.float32, data)
    assert_same_state(module, model, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sam", "asam", "sam-ire", "looksam"])
def test_accumulated_batches_give_the_large_batch_step(optimizer):
    data = dataset(torch.float64, BATCH * STEPS * 2)
    module = Classifier(optimizer, torch.float64)
    trainer, logger = fit(module, data, precision="64-true", accumulate_grad_batches=2)
    model, losses = reference(optimizer, torch.float64, data, accumulate=2)
    assert_same_state(module, model, atol=0.0)
    assert trainer.global_step == STEPS
    assert module.hook_calls["on_before_optimizer_step"] == STEPS
    # Lightning logs the last micro-batch's loss of each step
    _, logged = logged_losses(logger)
    assert all(torch.equal(a, b) for a, b in zip(logged, losses[1::2]))


@pytest.mark.parametrize(
    "algorithm,value,clip",
    [("norm", 0.05, functools.partial(nn.utils.clip_grad_norm_, max_norm=0.05)),
     ("value", 0.01, functools.partial(nn.utils.clip_grad_value_, clip_value=0.01))],
)
def test_gradient_clipping_acts_on_the_gradient_of_the_base_step(algorithm, value, clip):
    data = dataset(torch.float64, BATCH * STEPS)
    module = Classifier("usam", torch.float64)  # USAM: clipping the first gradient would show
    fit(module, data, precision="64-true", gradient_clip_val=value,
        gradient_clip_algorithm=algorithm)
    model, _ = reference("usam", torch.float64, data, clip=clip)
    assert_same_state(module, model, atol=0.0)
    unclipped, _ = reference("usam", torch.float64, data)
    assert not torch.equal(model[0].weight, unclipped[0].weight)  # the clipping did bite


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_float16_mixed_precision_passes_the_grad_scaler_to_both_steps(manual):
    data = dataset(torch.float32, BATCH * STEPS)
    module = Classifier("sam", torch.float32, manual=manual)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    fit(module, data, plugins=[plugin])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    model, _ = reference("sam", torch.float32, data, scaler=scaler,
                         autocast=lambda: torch.autocast("cpu", dtype=torch.float16))
    assert_same_state(module, model, atol=1e-6)
    assert plugin.scaler.get_scale() == scaler.get_scale()


def test_bfloat16_mixed_precision_agrees_with_the_autocast_loop():
    data = dataset(torch.float32, BATCH * STEPS)
    module = Classifier("sam", torch.float32)
    fit(module, data, precision="bf16-mixed")
    model, _ = reference("sam", torch.float32, data,
                         autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert_same_state(module, model, atol=1e-6)


def test_a_skipped_float16_step_leaves_weights_and_optimizer_state_unchanged():
    data = dataset(torch.float32, BATCH * 1)
    module = Classifier("sam", torch.float32)
    before = [p.detach().clone() for p in module.net.parameters()]
    # a scale of 2**127 overflows the float16 backward: the scaler skips the step
    plugin = MixedPrecision("16-mixed", "cpu",
                            scaler=torch.amp.GradScaler("cpu", init_scale=2.0**127))
    fit(module, data, steps=1, plugins=[plugin])
    assert all(torch.equal(a, b) for a, b in zip(before, module.net.parameters()))
    sam = module.optimizers().optimizer
    assert sam.skipped_last_step and not sam.base_optimizer.state
    assert plugin.scaler.get_scale() == 2.0**126
    assert module.net[1].num_batches_tracked.item() == 1


# -- refusals -----------------------------------------------------------------------------------

class NoDiagonal(Classifier):
    curvature_diagonal = SharpnessAwareMixin.curvature_diagonal


def test_ire_without_a_curvature_diagonal_is_refused_when_fitting_starts():
    with pytest.raises(ValueError, match=r"NoDiagonal trains with IRE but does not define "
                                         r"curvature_diagonal\(batch\)"):
        fit(NoDiagonal("sam-ire", torch.float64), dataset(torch.float64, BATCH),
            precision="64-true")


@pytest.mark.parametrize("build,message", [
    (lambda params: MSAM(params, torch.optim.SGD, m=4, lr=0.1),
     r"^MSAM with m=4 is not supported in Lightning: it perturbs each of m micro-batches"),
    (lambda params: BSAM(params, lr=0.1, num_data=64),
     r"^BSAM is not supported in Lightning: its first pass runs at noisy weights"),
])
@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_an_optimizer_whose_step_is_not_one_pair_per_batch_is_refused(build, message, manual):
    class Refused(Classifier):
        def configure_optimizers(self):
            return build(self.parameters())

    module = Refused("sam", torch.float64, manual=manual)
    with pytest.raises(ValueError, match=message):
        fit(module, dataset(torch.float64, BATCH), precision="64-true")
    assert module.global_step == 0


def test_an_unsupported_precision_plugin_is_refused_when_fitting_starts():
    class CustomPrecision(Precision):
        pass

    module = Classifier("sam", torch.float32)
    with pytest.raises(ValueError, match=r"^precision plugin CustomPrecision is not supported "
                                         r"with a samhess SAM optimizer; use precision 32-true"):
        fit(module, dataset(torch.float32, BATCH), plugins=[CustomPrecision()])
    assert module.global_step == 0


def test_an_unsupported_strategy_is_refused_when_fitting_starts():
    class CustomStrategy(SingleDeviceStrategy):
        pass

    with pytest.raises(ValueError, match=r"^strategy CustomStrategy is not supported"):
        fit(Classifier("sam", torch.float32), dataset(torch.float32, BATCH),
            strategy=CustomStrategy(device=torch.device("cpu")))


def test_a_batch_hook_that_skips_super_is_detected_at_the_first_step():
    class Forgetful(Classifier):
        def on_train_batch_start(self, batch, batch_idx):
            return None

    with pytest.raises(RuntimeError, match=r"must call super\(\).on_train_batch_start"):
        fit(Forgetful("sam", torch.float32), dataset(torch.float32, BATCH))


def test_the_mixin_needs_a_lightning_module():
    class NotAModule(SharpnessAwareMixin):
        trainer = None

    with pytest.raises(TypeError, match=r"NotAModule is not one"):
        NotAModule()._check_sharpness_aware_setup()


@pytest.mark.parametrize("precision,dtype", [("bf16-true", torch.bfloat16),
                                             ("16-true", torch.float16)])
def test_half_precision_weights_equal_the_two_step_loop_in_that_dtype(precision, dtype):
    data = dataset(torch.float32, BATCH * STEPS)
    module = Classifier("sam", torch.float32)
    fit(module, data, precision=precision)
    halved = TensorDataset(data.tensors[0].to(dtype), data.tensors[1])
    model, _ = reference("sam", dtype, halved)
    assert_same_state(module, model, atol=0.0)


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_with_accumulation_equals_the_single_process_large_batch_step(tmp_path):
    """Two ranks under torchrun, ``strategy="ddp"``, ``accumulate_grad_batches=2`` (the replay
    of the first micro-batch runs without gradient sync); see ``lightning_ddp_worker.py``."""
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).with_name("lightning_ddp_worker.py")
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node=2", str(worker), str(out)],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
        text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["global_step"] == 3
    assert result["max_difference"] < 1e-12

