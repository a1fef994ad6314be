"""The optimizers a run can use: one registry entry per kind, from which everything else follows.

An :class:`OptimizerKind` declares, once, what the command line, the training loop and the report
need to know about one optimizer: its name and label, its colour in every plot, how it is built
from the run's settings, which hyperparameters it reads (and their per-kind defaults), how one
training step drives it, the optimizer an IRE kind wraps, and which of the seed note's claims
its report states. Config defaults, ``--help`` texts, report labels, colours, hyperparameter
lines and claims are derived from the registry; an unknown name is an error, never another
optimizer. The first-order prediction of an optimizer's step is not declared here: the analysis
looks it up by the built optimizer's exact type (:mod:`samhess.analysis.predictions`).

Adding an optimizer is one class in :mod:`samhess.optim`, one :func:`register` call here (plus
the settings of any hyperparameter only it reads) and, where its step has a closed first-order
form, one :func:`samhess.analysis.register_prediction` call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from samhess.experiments.settings import (
    Setting,
    ValueKind,
    at_least,
    at_most,
    below,
    greater_than,
    open_unit_interval,
)
from samhess.experiments.stability import StabilityEdge

__all__ = [
    "StepProtocol",
    "ClaimKind",
    "OptimizerKind",
    "OPTIMIZER_KINDS",
    "HYPERPARAMETERS",
    "optimizer_kind",
    "build_optimizer",
    "register",
]

HYPERPARAMETER_GROUP = "optimizer hyperparameters"


class StepProtocol(enum.Enum):
    """How one training step drives an optimizer (:mod:`samhess.experiments.training_step`)."""

    #: forward, backward, ``step()``.
    ONE_PASS = "one pass"
    #: forward, backward, ``first_step``; forward, backward (BatchNorm statistics frozen),
    #: ``second_step`` (:func:`samhess.distributed.sam_step`, per-replica ascent included).
    TWO_PASS = "two passes"
    #: ``step(closure)``; the optimizer decides how often to call the closure, which freezes
    #: BatchNorm statistics after its first call of the step.
    CLOSURE = "closure"
    #: ``step(closure)`` with ``closure(i)`` running micro-batch ``i`` (m-sharpness).
    MICRO_BATCH = "micro-batches"


class ClaimKind(enum.Enum):
    """A claim of the seed note that a kind's report tests on the recorded numbers."""

    #: The step accelerates sharp directions more than flat ones: the sharp/flat gain ratio
    #: against a plain gradient step is above 1 (the seed's picture of SAM).
    SHARP_FIRST = "sharp first"
    #: IRE accelerates flat directions more than sharp ones, relative to its own base
    #: optimizer's step: the ratio against the base's step is below 1.
    FLAT_FIRST_VS_BASE = "flat first against its base"
    #: The run is flatter (lower lambda_max) than its flatness reference at a train loss both
    #: reached (cross-entropy curvature shrinks with the loss, so final values at different
    #: losses would not compare like with like).
    FLATTER_THAN_REFERENCE = "flatter than its reference"


Hyperparameters = Mapping[str, Any]


@dataclass(frozen=True)
class OptimizerKind:
    """One optimizer a run can use.

    Attributes:
        name: the command-line name (``sam-ire``).
        label: the name in reports (``SAM-IRE``).
        colour: its colour in every plot.
        summary: one line saying what it is, with its paper.
        build: ``build(params, hyperparameters)`` -> the optimizer; ``hyperparameters`` holds
            every resolved setting (a :class:`RunConfig`'s ``to_dict()``).
        reads: the hyperparameter settings it reads, in the order reports list them.
        defaults: its own defaults of shared hyperparameters (``{"lr": 1e-3}``).
        protocol: how a training step drives it.
        per_replica_ascent: under torchrun, whether its ascent may come from each rank's own
            shard (``--sam-perturbation per-replica``): only where the first pass's gradient
            enters nothing but the perturbation, so the replicas stay identical.
        base: for an IRE kind, the kind IRE wraps (its claims and convergence are judged
            against that kind's step and loss).
        flatness_reference: the kind whose lambda_max this one is claimed to beat.
        claims: the claims its report tests.
        check: a check of the resolved configuration beyond each setting's own (``None``, or
            the requirement it breaks, in words).
        stability_edge: the edge of stability of its step, drawn on the lambda_max curves
            (:mod:`samhess.experiments.stability`); ``None`` where none is known (Adam's
            preconditioned step, ASAM's rescaled perturbation, the SAM variants).
    """

    name: str
    label: str
    colour: str
    summary: str
    build: Callable[[Sequence[Any], Hyperparameters], Any]
    reads: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    protocol: StepProtocol = StepProtocol.ONE_PASS
    per_replica_ascent: bool = False
    base: str | None = None
    flatness_reference: str | None = None
    claims: tuple[ClaimKind, ...] = ()
    check: Callable[[Any], str | None] | None = None
    stability_edge: StabilityEdge | None = None

    @property
    def passes(self) -> str:
        """How many forward-backward passes a step takes, in words."""
        return self.protocol.value

    @property
    def two_pass(self) -> bool:
        """Whether a step takes more than one forward-backward pass (at least sometimes)."""
        return self.protocol is not StepProtocol.ONE_PASS

    def default_of(self, setting: Setting) -> Any:
        """This kind's default for a per-optimizer setting."""
        return self.defaults.get(setting.name, setting.default)


# -- hyperparameters ------------------------------------------------------------------------------

def _hyperparameter(name: str, kind: ValueKind, default: Any, help: str, metavar: str,
                    *bounds: Any, per_optimizer: bool = False) -> Setting:
    return Setting(name=name, kind=kind, default=default, help=help, group=HYPERPARAMETER_GROUP,
                   metavar=metavar, bounds=bounds, per_optimizer=per_optimizer,
                   nullable=per_optimizer)


LR = _hyperparameter("lr", ValueKind.REAL, 0.1, "learning rate", "LR", greater_than(0),
                     per_optimizer=True)
MOMENTUM = _hyperparameter("momentum", ValueKind.REAL, 0.0, "SGD momentum", "M", at_least(0),
                           below(1))
WEIGHT_DECAY = _hyperparameter("weight_decay", ValueKind.REAL, 0.0,
                               "weight decay (L2 for SGD, decoupled for AdamW, the prior's "
                               "precision for BSAM)", "WD", at_least(0), per_optimizer=True)
RHO = _hyperparameter("rho", ValueKind.REAL, 0.05, "SAM's perturbation radius", "RHO",
                      at_least(0), per_optimizer=True)
KAPPA = _hyperparameter("kappa", ValueKind.REAL, 1.0,
                        "IRE's amplification: flat coordinates move (1 + kappa) times as far",
                        "K", at_least(0))
GAMMA = _hyperparameter("gamma", ValueKind.REAL, 0.8,
                        "IRE's share of coordinates called flat, in (0, 1)", "G",
                        open_unit_interval())
REFRESH_EVERY = _hyperparameter("refresh_every", ValueKind.INT, 10,
                                "steps between IRE mask refreshes (Fisher diagonal on the "
                                "step's batch)", "N", at_least(1))
START_STEP = _hyperparameter("start_step", ValueKind.INT, 0, "step from which IRE amplifies",
                             "N", at_least(0))

GSAM_ALPHA = _hyperparameter("gsam_alpha", ValueKind.REAL, 0.4,
                             "GSAM's weight of the gradient's component orthogonal to the "
                             "perturbed gradient", "A", at_least(0))
WSAM_GAMMA = _hyperparameter("wsam_gamma", ValueKind.REAL, 0.9,
                             "WSAM's weight of the sharpness term, in [0, 1)", "G", at_least(0),
                             below(1))
FRIENDLY_SIGMA = _hyperparameter("friendly_sigma", ValueKind.REAL, 1.0,
                                 "FriendlySAM's weight of the gradient average removed from the "
                                 "ascent", "S", at_least(0))
FRIENDLY_LAMBDA = _hyperparameter("friendly_lambda", ValueKind.REAL, 0.9,
                                  "FriendlySAM's averaging factor of the gradient average, in "
                                  "[0, 1)", "L", at_least(0), below(1))
LOOKSAM_K = _hyperparameter("looksam_k", ValueKind.INT, 5,
                            "LookSAM's period: a SAM step every k steps", "K", at_least(1))
LOOKSAM_ALPHA = _hyperparameter("looksam_alpha", ValueKind.REAL, 0.7,
                                "LookSAM's weight of the reused direction", "A", at_least(0))
MSAM_M = _hyperparameter("msam_m", ValueKind.INT, 4,
                         "m-SAM's micro-batches per batch, each perturbed by its own gradient",
                         "M", at_least(1))
RST_P = _hyperparameter("rst_p", ValueKind.REAL, 0.5,
                        "RST's probability of a SAM step, in [0, 1]", "P", at_least(0),
                        at_most(1))
BSAM_DAMPING = _hyperparameter("bsam_damping", ValueKind.REAL, 0.1,
                               "BSAM's damping of the precision update", "D", at_least(0))
BSAM_S_INIT = _hyperparameter("bsam_s_init", ValueKind.REAL, 1.0,
                              "BSAM's initial precision", "S", greater_than(0))

#: Every hyperparameter setting any kind reads, in the order the flags are listed.
HYPERPARAMETERS: tuple[Setting, ...] = (
    LR, MOMENTUM, WEIGHT_DECAY, RHO, KAPPA, GAMMA, REFRESH_EVERY, START_STEP,
    GSAM_ALPHA, WSAM_GAMMA, FRIENDLY_SIGMA, FRIENDLY_LAMBDA, LOOKSAM_K, LOOKSAM_ALPHA, MSAM_M,
    RST_P, BSAM_DAMPING, BSAM_S_INIT,
)

_SGD_READS = ("lr", "momentum", "weight_decay")
_SAM_READS = (*_SGD_READS, "rho")
_IRE_READS = ("kappa", "gamma", "refresh_every", "start_step")


# -- builders ---------------------------------------------------------------------------------------

def _sgd(params: Sequence[Any], hp: Hyperparameters) -> Any:
    import torch

    return torch.optim.SGD(params, lr=float(hp["lr"]), momentum=float(hp["momentum"]),
                           weight_decay=float(hp["weight_decay"]))


def _adamw(params: Sequence[Any], hp: Hyperparameters) -> Any:
    import torch

    return torch.optim.AdamW(params, lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))


def _sam_family(class_name: str, seeded: bool = False,
                **own: str) -> Callable[[Sequence[Any], Hyperparameters], Any]:
    """A builder of ``samhess.optim.<class_name>`` over SGD; ``own`` maps the class's keyword
    arguments to the settings that hold them (``alpha="gsam_alpha"``); a ``seeded`` class draws
    from a generator seeded by the run's seed."""

    def build(params: Sequence[Any], hp: Hyperparameters) -> Any:
        import torch

        import samhess.optim

        optimizer_class = getattr(samhess.optim, class_name)
        extra = {argument: hp[setting] for argument, setting in own.items()}
        if seeded:
            extra["seed"] = int(hp.get("seed", 0))
        return optimizer_class(params, torch.optim.SGD, rho=float(hp["rho"]), lr=float(hp["lr"]),
                               momentum=float(hp["momentum"]),
                               weight_decay=float(hp["weight_decay"]), **extra)

    return build


def _bsam(params: Sequence[Any], hp: Hyperparameters) -> Any:
    from samhess.optim import BSAM

    if hp.get("num_data") is None:
        raise ValueError("bsam needs num_data, the number of training examples")
    return BSAM(params, num_data=int(hp["num_data"]), lr=float(hp["lr"]),
                weight_decay=float(hp["weight_decay"]), rho=float(hp["rho"]),
                damping=float(hp["bsam_damping"]), s_init=float(hp["bsam_s_init"]),
                seed=int(hp.get("seed", 0)))


def _ire_over(base: OptimizerKind) -> Callable[[Sequence[Any], Hyperparameters], Any]:
    def build(params: Sequence[Any], hp: Hyperparameters) -> Any:
        from samhess.optim import IRE

        return IRE(base.build(params, hp), kappa=float(hp["kappa"]), gamma=float(hp["gamma"]),
                   refresh_every=int(hp["refresh_every"]), start_step=int(hp["start_step"]))

    return build


# -- the registry -----------------------------------------------------------------------------------

_KINDS: dict[str, OptimizerKind] = {}
#: Every registered kind by name, in registration order (the order of help texts and docs).
OPTIMIZER_KINDS: Mapping[str, OptimizerKind] = _KINDS


def register(kind: OptimizerKind) -> OptimizerKind:
    """Add ``kind`` to the registry.

    Raises:
        ValueError: the name is taken, its base or flatness reference is not registered, it
            reads an undeclared hyperparameter, or it sets a default of one it does not read.
    """
    known = {setting.name for setting in HYPERPARAMETERS}
    if kind.name in _KINDS:
        raise ValueError(f"optimizer kind {kind.name!r} is registered twice")
    for reference in (kind.base, kind.flatness_reference):
        if reference is not None and reference not in _KINDS:
            raise ValueError(f"optimizer kind {kind.name!r} refers to {reference!r}, which is "
                             "not registered (register it first)")
    unknown = [name for name in (*kind.reads, *kind.defaults) if name not in known]
    if unknown:
        raise ValueError(f"optimizer kind {kind.name!r} names undeclared hyperparameters "
                         f"{unknown}")
    unread = [name for name in kind.defaults if name not in kind.reads]
    if unread:
        raise ValueError(f"optimizer kind {kind.name!r} sets defaults of {unread}, which it "
                         "does not read")
    _KINDS[kind.name] = kind
    return kind


def optimizer_kind(name: str) -> OptimizerKind:
    """The registered kind called ``name``.

    Raises:
        ValueError: no kind has that name (never a fallback to another optimizer).
    """
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"optimizer {name!r} is not one of {', '.join(_KINDS)}") from None


def build_optimizer(name: str, model: Any, hyperparameters: Hyperparameters | None = None) -> Any:
    """Build kind ``name`` over ``model``'s trainable parameters.

    Args:
        name: a registered kind.
        model: the model whose trainable parameters are optimized.
        hyperparameters: values of the settings in :data:`HYPERPARAMETERS` (a
            :class:`RunConfig`'s ``to_dict()`` will do); missing ones take the kind's defaults,
            keys it does not read are ignored.

    Raises:
        ValueError: an unknown name, or a model without trainable parameters.
    """
    kind = optimizer_kind(name)
    values = {setting.name: kind.default_of(setting) for setting in HYPERPARAMETERS}
    values.update({k: v for k, v in (hyperparameters or {}).items() if v is not None})
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return kind.build(params, values)


def ire_kind(name: str, label: str, colour: str, base: OptimizerKind) -> OptimizerKind:
    """The kind of IRE over ``base`` (Wang et al., NeurIPS 2024).

    Its edge of stability is its base's: IRE leaves the coordinates it calls sharp, where the
    top eigenvectors mostly lie, to the base's step.
    """
    return OptimizerKind(
        name=name, label=label, colour=colour,
        summary=f"IRE over {base.label} (Wang et al., NeurIPS 2024): D = (I + kappa M) D_base",
        build=_ire_over(base), reads=(*base.reads, *_IRE_READS), defaults=base.defaults,
        protocol=base.protocol, per_replica_ascent=base.per_replica_ascent, base=base.name,
        flatness_reference=None, claims=(ClaimKind.FLAT_FIRST_VS_BASE,), check=base.check,
        stability_edge=base.stability_edge)


SGD = register(OptimizerKind(
    name="sgd", label="SGD", colour="#1f77b4", summary="torch.optim.SGD", build=_sgd,
    reads=_SGD_READS, stability_edge=StabilityEdge.GRADIENT_DESCENT))

_SHARP_AND_FLAT = (ClaimKind.SHARP_FIRST, ClaimKind.FLATTER_THAN_REFERENCE)


def sam_variant_kind(name: str, label: str, colour: str, summary: str, class_name: str, *,
                     protocol: StepProtocol = StepProtocol.TWO_PASS,
                     claims: tuple[ClaimKind, ...] = _SHARP_AND_FLAT, seeded: bool = False,
                     check: Callable[[Any], str | None] | None = None,
                     defaults: Mapping[str, Any] | None = None, per_replica_ascent: bool = False,
                     stability_edge: StabilityEdge | None = None, **own: str) -> OptimizerKind:
    """The kind of a SAM variant over SGD: SAM's hyperparameters plus its own ``own`` (keyword
    argument of the class -> setting), judged against SGD's flatness."""
    return OptimizerKind(
        name=name, label=label, colour=colour, summary=summary,
        build=_sam_family(class_name, seeded=seeded, **own), reads=(*_SAM_READS, *own.values()),
        defaults=dict(defaults or {}), protocol=protocol, per_replica_ascent=per_replica_ascent,
        flatness_reference="sgd", claims=claims, check=check, stability_edge=stability_edge)


SAM = register(sam_variant_kind(
    "sam", "SAM", "#d62728", "SAM over SGD, e = rho g / ||g|| (Foret et al., ICLR 2021)", "SAM",
    per_replica_ascent=True, stability_edge=StabilityEdge.SAM))
USAM = register(sam_variant_kind(
    "usam", "USAM", "#ff7f0e",
    "unnormalized SAM over SGD, e = rho g (Andriushchenko & Flammarion, ICML 2022)", "USAM",
    per_replica_ascent=True, stability_edge=StabilityEdge.USAM))
ASAM = register(sam_variant_kind(
    "asam", "ASAM", "#8c564b",
    "adaptive SAM over SGD, e = rho |w|^2 g / || |w| g || (Kwon et al., ICML 2021)", "ASAM",
    defaults={"rho": 0.5}, per_replica_ascent=True))
IRE = register(ire_kind("ire", "IRE", "#2ca02c", SGD))
SAM_IRE = register(ire_kind("sam-ire", "SAM-IRE", "#9467bd", SAM))
ADAMW = register(OptimizerKind(
    name="adamw", label="AdamW", colour="#7f7f7f", summary="torch.optim.AdamW", build=_adamw,
    reads=("lr", "weight_decay"), defaults={"lr": 1e-3}))
ADMIRE = register(ire_kind("admire", "AdmIRE", "#17becf", ADAMW))


def _micro_batches_divide_the_batch(config: Any) -> str | None:
    if config.batch_size % config.msam_m == 0:
        return None
    return f"--msam-m {config.msam_m} must divide --batch-size {config.batch_size}"


GSAM = register(sam_variant_kind(
    "gsam", "GSAM", "#e377c2",
    "surrogate-gap SAM over SGD: descend along g_p - alpha g_perp (Zhuang et al., ICLR 2022)",
    "GSAM", alpha="gsam_alpha"))
WSAM = register(sam_variant_kind(
    "wsam", "WSAM", "#bcbd22",
    "weighted SAM over SGD: g + gamma / (1 - gamma) (g_p - g) (Yue et al., KDD 2023)",
    "WSAM", gamma="wsam_gamma"))
FRIENDLY_SAM = register(sam_variant_kind(
    "friendly-sam", "FriendlySAM", "#aec7e8",
    "SAM over SGD perturbing along g - sigma m_t, the gradient less its average "
    "(Li et al., CVPR 2024)",
    "FriendlySAM", sigma="friendly_sigma", lmbda="friendly_lambda"))
LOOKSAM = register(sam_variant_kind(
    "looksam", "LookSAM", "#ffbb78",
    "SAM over SGD every k steps, its orthogonal direction reused in between "
    "(Liu et al., CVPR 2022)",
    "LookSAM", k="looksam_k", alpha="looksam_alpha"))
MSAM = register(sam_variant_kind(
    "msam", "m-SAM", "#98df8a",
    "SAM over SGD with one perturbation per micro-batch (m-sharpness; Foret et al., ICLR 2021; "
    "Andriushchenko & Flammarion, ICML 2022)",
    "MSAM", protocol=StepProtocol.MICRO_BATCH, check=_micro_batches_divide_the_batch,
    m="msam_m"))
# A step of RST is SAM's or SGD's at random: a single measured step's ratio tells which was
# drawn, not the optimizer's tendency, so only its flatness is claimed.
RST = register(sam_variant_kind(
    "rst", "RST", "#c5b0d5",
    "randomized switching: a SAM step with probability p, else an SGD step (Zhao et al., 2022)",
    "RST", claims=(ClaimKind.FLATTER_THAN_REFERENCE,), seeded=True, p="rst_p"))
# BSAM's step against a gradient step carries its Adam-like scaling (as AdamW's does), so its
# sharp/flat ratio says nothing about the seed's claim; its flatness is claimed against SGD's.
BSAM = register(OptimizerKind(
    name="bsam", label="BSAM", colour="#c49c94",
    summary="Bayesian SAM, an Adam-like update with noise and a learned precision "
            "(Mollenhoff & Khan, ICLR 2023)",
    build=_bsam, reads=("lr", "weight_decay", "rho", "bsam_damping", "bsam_s_init"),
    defaults={"lr": 0.5, "rho": 0.01, "weight_decay": 1e-4}, protocol=StepProtocol.CLOSURE,
    flatness_reference="sgd", claims=(ClaimKind.FLATTER_THAN_REFERENCE,)))
