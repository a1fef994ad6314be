"""The SAM variants on float64 quadratics against transcriptions of their papers' algorithms.

Each reference below is written from the paper's update in numpy, on the flat weight vector,
without the classes: L_t(w) = 1/2 w^T A w + b_t^T w, with a new linear term b_t at every step
so that moving averages and reused directions see changing gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from samhess.optim import ASAM, BSAM, IRE, MSAM, RST, WSAM, FriendlySAM, GSAM, LookSAM

from .conftest import Quadratic

STEPS = 7
RHO = 0.1

BASES = {
    "sgd": (torch.optim.SGD, dict(lr=0.05)),
    "sgd-momentum": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "adamw": (torch.optim.AdamW, dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)),
}


class ShiftedQuadratic(Quadratic):
    """L(w) = 1/2 w^T A w + shift^T w; the closure sets ``shift`` for each step."""

    def __init__(self, matrix: np.ndarray, start: np.ndarray) -> None:
        super().__init__(matrix, start)
        self.register_buffer("shift", torch.zeros(7, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        w = self.flat()
        return 0.5 * w @ self.matrix @ w + self.shift @ w


@pytest.fixture
def shifts():
    return np.random.default_rng(7).normal(scale=0.5, size=(STEPS, 7))


def base_update(reference, base):
    return reference.sgd if base is torch.optim.SGD else reference.adamw


def run_closure(model, optimizer, shifts):
    for shift in shifts:
        model.shift.copy_(torch.from_numpy(shift))

        def closure():
            optimizer.zero_grad()
            loss = model()
            loss.backward()
            return loss

        optimizer.step(closure)
    return model.flat().detach().numpy()


def run_two_step(model, optimizer, shifts):
    """The hand-written loop, skipping the second pass where first_step says so."""
    passes = 0
    for shift in shifts:
        model.shift.copy_(torch.from_numpy(shift))
        model().backward()
        passes += 1
        if optimizer.first_step(zero_grad=True):
            model().backward()
            passes += 1
        optimizer.second_step(zero_grad=True)
    return model.flat().detach().numpy(), passes


def both_paths(make_model, build, shifts):
    """Weights after the closure path; asserts the two-step path gives the same bits."""
    closure_model, two_step_model = make_model(), make_model()
    closure_weights = run_closure(closure_model, build(closure_model.parameters()), shifts)
    two_step_weights, passes = run_two_step(two_step_model, build(two_step_model.parameters()),
                                            shifts)
    np.testing.assert_array_equal(two_step_weights, closure_weights)
    return closure_weights, passes


@pytest.fixture
def make_shifted(quadratic_problem):
    matrix, start = quadratic_problem
    return lambda: ShiftedQuadratic(matrix, start)


def assert_moved_and_close(actual, expected, start):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-11)
    assert np.abs(expected - start).max() > 1e-3  # the steps moved w


# -- GSAM -----------------------------------------------------------------------------------------


def gsam_reference(matrix, start, shifts, alpha, update, base_kwargs):
    """Zhuang et al. (2022), Algorithm 1: descend along g_p - alpha g_perp."""
    w, state = start.copy(), {}
    for b in shifts:
        g = matrix @ w + b
        g_p = matrix @ (w + RHO * g / np.linalg.norm(g)) + b
        g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
        w = update(w, g_p - alpha * g_perp, state, **base_kwargs)
    return w


@pytest.mark.parametrize("base_name", list(BASES))
def test_gsam_matches_the_paper(base_name, make_shifted, quadratic_problem, shifts, reference):
    matrix, start = quadratic_problem
    base, kwargs = BASES[base_name]
    weights, _ = both_paths(make_shifted, lambda p: GSAM(p, base, rho=RHO, alpha=0.3, **kwargs),
                            shifts)
    expected = gsam_reference(matrix, start, shifts, 0.3, base_update(reference, base), kwargs)
    assert_moved_and_close(weights, expected, start)


def test_gsam_first_order_formula(make_shifted, quadratic_problem):
    """The docstring's first-order step: its error shrinks like rho^2 (4x when rho halves)."""
    matrix, start = quadratic_problem
    g = matrix @ start
    unit = g / np.linalg.norm(g)
    alpha, lr = 0.3, 0.05
    errors = []
    for rho in (1e-2, 5e-3):
        model = make_shifted()
        optimizer = GSAM(model.parameters(), torch.optim.SGD, rho=rho, alpha=alpha, lr=lr)
        weights = run_closure(model, optimizer, np.zeros((1, 7)))
        hg = matrix @ g
        predicted = start - lr * (g + rho / np.linalg.norm(g)
                                  * ((1 + alpha) * hg - alpha * (unit @ hg) * unit))
        errors.append(np.linalg.norm(weights - predicted))
    assert errors[0] > 0
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.05)


# -- WSAM -----------------------------------------------------------------------------------------


def wsam_reference(matrix, start, shifts, gamma, decouple, update, base_kwargs):
    """Yue et al. (2023), Algorithm 1 (decoupled) and the weighted objective's gradient."""
    alpha = gamma / (1 - gamma)
    w, state = start.copy(), {}
    for b in shifts:
        g = matrix @ w + b
        g_s = matrix @ (w + RHO * g / np.linalg.norm(g)) + b
        if decouple:
            w = update(w, g, state, **base_kwargs) - base_kwargs["lr"] * alpha * (g_s - g)
        else:
            w = update(w, g + alpha * (g_s - g), state, **base_kwargs)
    return w


@pytest.mark.parametrize("decouple", [True, False])
@pytest.mark.parametrize("base_name", list(BASES))
def test_wsam_matches_the_paper(base_name, decouple, make_shifted, quadratic_problem, shifts,
                                reference):
    matrix, start = quadratic_problem
    base, kwargs = BASES[base_name]
    weights, _ = both_paths(
        make_shifted,
        lambda p: WSAM(p, base, rho=RHO, gamma=0.8, decouple=decouple, **kwargs), shifts)
    expected = wsam_reference(matrix, start, shifts, 0.8, decouple, base_update(reference, base),
                              kwargs)
    assert_moved_and_close(weights, expected, start)


def test_wsam_with_gamma_one_half_is_sam_exactly_for_sgd(make_shifted, shifts):
    from samhess.optim import SAM

    sam, _ = both_paths(make_shifted, lambda p: SAM(p, torch.optim.SGD, rho=RHO, lr=0.05), shifts)
    coupled, _ = both_paths(
        make_shifted,
        lambda p: WSAM(p, torch.optim.SGD, rho=RHO, gamma=0.5, decouple=False, lr=0.05), shifts)
    np.testing.assert_allclose(coupled, sam, rtol=0, atol=1e-14)


# -- FriendlySAM ----------------------------------------------------------------------------------


def friendly_reference(matrix, start, shifts, sigma, lmbda, update, base_kwargs):
    """Li et al. (2024): perturb along d_t = g_t - sigma m_t, m_t the EMA of g (m_0 = 0)."""
    w, m, state = start.copy(), np.zeros(7), {}
    for b in shifts:
        g = matrix @ w + b
        m = lmbda * m + (1 - lmbda) * g
        d = g - sigma * m
        g_s = matrix @ (w + RHO * d / np.linalg.norm(d)) + b
        w = update(w, g_s, state, **base_kwargs)
    return w


@pytest.mark.parametrize("base_name", list(BASES))
def test_friendly_sam_matches_the_paper(base_name, make_shifted, quadratic_problem, shifts,
                                        reference):
    matrix, start = quadratic_problem
    base, kwargs = BASES[base_name]
    weights, _ = both_paths(
        make_shifted, lambda p: FriendlySAM(p, base, rho=RHO, sigma=0.8, lmbda=0.6, **kwargs),
        shifts)
    expected = friendly_reference(matrix, start, shifts, 0.8, 0.6, base_update(reference, base),
                                  kwargs)
    assert_moved_and_close(weights, expected, start)


# -- LookSAM --------------------------------------------------------------------------------------


def looksam_reference(matrix, start, shifts, k, alpha, update, base_kwargs):
    """Liu et al. (2022), Algorithm 1: SAM every k steps, g_v reused in between."""
    w, g_v, state = start.copy(), None, {}
    for t, b in enumerate(shifts):
        g = matrix @ w + b
        if t % k == 0:
            g_s = matrix @ (w + RHO * g / np.linalg.norm(g)) + b
            cosine = (g @ g_s) / (np.linalg.norm(g) * np.linalg.norm(g_s))
            g_v = g_s - np.linalg.norm(g_s) * cosine * g / np.linalg.norm(g)
        else:
            g_s = g + alpha * np.linalg.norm(g) / np.linalg.norm(g_v) * g_v
        w = update(w, g_s, state, **base_kwargs)
    return w


@pytest.mark.parametrize("base_name", list(BASES))
def test_looksam_matches_the_paper_with_one_pass_in_between(base_name, make_shifted,
                                                             quadratic_problem, shifts, reference):
    matrix, start = quadratic_problem
    base, kwargs = BASES[base_name]
    weights, passes = both_paths(make_shifted,
                                 lambda p: LookSAM(p, base, rho=RHO, k=3, alpha=0.7, **kwargs),
                                 shifts)
    expected = looksam_reference(matrix, start, shifts, 3, 0.7, base_update(reference, base),
                                 kwargs)
    assert_moved_and_close(weights, expected, start)
    assert passes == STEPS + 3  # SAM steps at t = 0, 3, 6


def test_looksam_runs_the_unneeded_second_pass_harmlessly(make_shifted, shifts):
    """A loop that ignores first_step's answer runs a second pass at w: same weights."""
    skipping, _ = both_paths(make_shifted,
                             lambda p: LookSAM(p, torch.optim.SGD, rho=RHO, k=3, lr=0.05), shifts)
    model = make_shifted()
    optimizer = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=3, lr=0.05)
    for shift in shifts:
        model.shift.copy_(torch.from_numpy(shift))
        model().backward()
        optimizer.first_step(zero_grad=True)
        model().backward()
        optimizer.second_step(zero_grad=True)
    np.testing.assert_array_equal(model.flat().detach().numpy(), skipping)


def test_a_second_pass_run_on_a_single_pass_step_provides_the_gradient(make_shifted, shifts):
    """On a single-pass step the base step uses the last gradient taken at w: the second pass's
    when the loop runs one (under DDP that one is all-reduced), else the first pass's."""
    results = []
    for second_shift in (shifts[0], shifts[1]):
        model = make_shifted()
        optimizer = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=2, lr=0.05)
        run_two_step(model, optimizer, shifts[:1])  # t = 0: a SAM step
        model.shift.copy_(torch.from_numpy(shifts[0]))
        model().backward()
        assert not optimizer.first_step(zero_grad=True)  # t = 1: single pass
        model.shift.copy_(torch.from_numpy(second_shift))
        model().backward()
        optimizer.second_step(zero_grad=True)
        results.append(model.flat().detach().numpy())
    skipped_model = make_shifted()
    skipping = LookSAM(skipped_model.parameters(), torch.optim.SGD, rho=RHO, k=2, lr=0.05)
    run_two_step(skipped_model, skipping, [shifts[0], shifts[0]])
    np.testing.assert_array_equal(results[0], skipped_model.flat().detach().numpy())
    assert np.abs(results[1] - results[0]).max() > 1e-4


# -- RST ------------------------------------------------------------------------------------------


def rst_reference(matrix, start, shifts, p, seed, update, base_kwargs):
    """Zhao et al. (2022): SAM's step when the uniform draw u_t < p, the base step otherwise."""
    generator = torch.Generator().manual_seed(seed)
    w, state, sam_steps = start.copy(), {}, 0
    for b in shifts:
        g = matrix @ w + b
        if torch.rand((), generator=generator).item() < p:
            sam_steps += 1
            g = matrix @ (w + RHO * g / np.linalg.norm(g)) + b
        w = update(w, g, state, **base_kwargs)
    return w, sam_steps


@pytest.mark.parametrize("base_name", list(BASES))
def test_rst_matches_the_paper(base_name, make_shifted, quadratic_problem, shifts, reference):
    matrix, start = quadratic_problem
    base, kwargs = BASES[base_name]
    weights, passes = both_paths(make_shifted,
                                 lambda p: RST(p, base, rho=RHO, p=0.5, seed=3, **kwargs), shifts)
    expected, sam_steps = rst_reference(matrix, start, shifts, 0.5, 3, base_update(reference, base),
                                        kwargs)
    assert 0 < sam_steps < STEPS  # both kinds of step occur
    assert passes == STEPS + sam_steps
    assert_moved_and_close(weights, expected, start)


def test_rst_with_p_one_is_sam_and_with_p_zero_the_base_optimizer(make_shifted, shifts):
    from samhess.optim import SAM

    sam, _ = both_paths(make_shifted, lambda p: SAM(p, torch.optim.SGD, rho=RHO, lr=0.05), shifts)
    always, _ = both_paths(make_shifted,
                           lambda p: RST(p, torch.optim.SGD, rho=RHO, p=1.0, lr=0.05), shifts)
    np.testing.assert_array_equal(always, sam)
    model = make_shifted()
    plain = torch.optim.SGD(model.parameters(), lr=0.05)
    for shift in shifts:
        model.shift.copy_(torch.from_numpy(shift))
        plain.zero_grad()
        model().backward()
        plain.step()
    never, passes = both_paths(make_shifted,
                               lambda p: RST(p, torch.optim.SGD, rho=RHO, p=0.0, lr=0.05), shifts)
    np.testing.assert_array_equal(never, model.flat().detach().numpy())
    assert passes == STEPS


# -- MSAM -----------------------------------------------------------------------------------------


class MicroBatchQuadratics(nn.Module):
    """Micro-batch i has the loss 1/2 w^T A_i w + b_i^T w (its own curvature and gradient)."""

    def __init__(self, matrices: np.ndarray, offsets: np.ndarray, start: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("matrices", torch.tensor(matrices))
        self.register_buffer("offsets", torch.tensor(offsets))
        self.w = nn.Parameter(torch.tensor(start))

    def forward(self, index: int | None = None) -> torch.Tensor:
        indices = range(len(self.matrices)) if index is None else [index]
        losses = [0.5 * self.w @ self.matrices[i] @ self.w + self.offsets[i] @ self.w
                  for i in indices]
        return torch.stack(losses).mean()


@pytest.fixture
def micro_batch_problem():
    rng = np.random.default_rng(11)
    pieces = rng.standard_normal((4, 5, 5))
    matrices = np.einsum("mij,mkj->mik", pieces, pieces) + 0.1 * np.eye(5)
    return matrices, rng.normal(size=(4, 5)), rng.uniform(-1.5, 1.5, size=5)


def msam_reference(matrices, offsets, start, steps, update, base_kwargs):
    """Foret et al. (2021) m-sharpness: mean over i of grad L_i at w + rho g_i / ||g_i||."""
    w, state = start.copy(), {}
    for _ in range(steps):
        descent = np.zeros_like(w)
        for a, b in zip(matrices, offsets):
            g_i = a @ w + b
            descent += a @ (w + RHO * g_i / np.linalg.norm(g_i)) + b
        w = update(w, descent / len(matrices), state, **base_kwargs)
    return w


@pytest.mark.parametrize("base_name", list(BASES))
def test_msam_matches_m_sharpness(base_name, micro_batch_problem, reference):
    matrices, offsets, start = micro_batch_problem
    base, kwargs = BASES[base_name]
    expected = msam_reference(matrices, offsets, start, 3, base_update(reference, base), kwargs)

    closure_model = MicroBatchQuadratics(matrices, offsets, start)
    optimizer = MSAM(closure_model.parameters(), base, rho=RHO, m=4, **kwargs)
    losses = []
    for _ in range(3):
        def closure(index):
            optimizer.zero_grad()
            loss = closure_model(index)
            loss.backward()
            return loss

        at_w = closure_model().item()
        losses.append((optimizer.step(closure).item(), at_w))

    two_step_model = MicroBatchQuadratics(matrices, offsets, start)
    two_step = MSAM(two_step_model.parameters(), base, rho=RHO, m=4, **kwargs)
    for _ in range(3):
        for index in range(4):
            two_step_model(index).backward()
            two_step.first_step(zero_grad=True)
            two_step_model(index).backward()
            two_step.second_step(zero_grad=True)
            assert two_step.skipped_last_step == (index < 3)

    np.testing.assert_array_equal(two_step_model.w.detach().numpy(),
                                  closure_model.w.detach().numpy())
    assert_moved_and_close(closure_model.w.detach().numpy(), expected, start)
    for returned, at_w in losses:  # step returns the mean of the micro-batch losses at w
        assert returned == pytest.approx(at_w, rel=1e-14)


def test_msam_with_one_micro_batch_is_sam_and_differs_from_it_with_four(micro_batch_problem):
    from samhess.optim import SAM

    matrices, offsets, start = micro_batch_problem
    results = {}
    for name, build in {
        "sam": lambda p: SAM(p, torch.optim.SGD, rho=RHO, lr=0.05),
        "msam1": lambda p: MSAM(p, torch.optim.SGD, rho=RHO, m=1, lr=0.05),
        "msam4": lambda p: MSAM(p, torch.optim.SGD, rho=RHO, m=4, lr=0.05),
    }.items():
        model = MicroBatchQuadratics(matrices, offsets, start)
        optimizer = build(model.parameters())

        def whole_batch():
            optimizer.zero_grad()
            loss = model()
            loss.backward()
            return loss

        def micro_batch(index):
            optimizer.zero_grad()
            loss = model(index)
            loss.backward()
            return loss

        optimizer.step(micro_batch if name == "msam4" else whole_batch)
        results[name] = model.w.detach().numpy()
    np.testing.assert_array_equal(results["msam1"], results["sam"])
    assert np.abs(results["msam4"] - results["sam"]).max() > 1e-4


def test_msam_refuses_a_whole_batch_closure(micro_batch_problem):
    matrices, offsets, start = micro_batch_problem
    model = MicroBatchQuadratics(matrices, offsets, start)
    optimizer = MSAM(model.parameters(), torch.optim.SGD, rho=RHO, m=4, lr=0.05)
    with pytest.raises(TypeError, match=r"m=4 calls closure\(i\).*takes no argument"):
        optimizer.step(lambda: model().backward())
    np.testing.assert_array_equal(model.w.detach().numpy(), start)


# -- BSAM -----------------------------------------------------------------------------------------


def bsam_reference(matrix, start, shifts, seed, num_data, lr, betas, decay, damping, s_init,
                   amplify=lambda w_old, w_new: w_new):
    """Möllenhoff & Khan (2023), Algorithm 1 as in the authors' code; the noise drawn as BSAM
    documents it (per parameter tensor, in order: a 2x2 tensor, then 3 entries). ``amplify``
    post-processes each step (IRE)."""
    generator = torch.Generator().manual_seed(seed)
    w, m, s = start.copy(), np.zeros(7), np.full(7, s_init)
    beta1, beta2 = betas
    for b in shifts:
        z = np.concatenate([
            torch.randn((2, 2), generator=generator, dtype=torch.float64).numpy().reshape(-1),
            torch.randn((3,), generator=generator, dtype=torch.float64).numpy(),
        ])
        noisy_gradient = matrix @ (w + z / np.sqrt(num_data * s)) + b
        g = matrix @ (w + RHO * noisy_gradient / s) + b
        m = beta1 * m + (1 - beta1) * (g + decay * w)
        w = amplify(w, w - lr * m / s)
        s = beta2 * s + (1 - beta2) * (np.sqrt(s * noisy_gradient**2) + damping + decay)
    return w


def test_bsam_matches_the_paper(make_shifted, quadratic_problem, shifts):
    matrix, start = quadratic_problem
    settings = dict(num_data=50, lr=0.05, betas=(0.8, 0.95), weight_decay=1e-2, damping=0.1,
                    s_init=2.0)
    model, two_step_model = make_shifted(), make_shifted()
    weights = run_closure(model, BSAM(model.parameters(), rho=RHO, seed=5, **settings), shifts)

    optimizer = BSAM(two_step_model.parameters(), rho=RHO, seed=5, **settings)
    for shift in shifts:
        two_step_model.shift.copy_(torch.from_numpy(shift))
        with optimizer.noisy_weights():
            two_step_model().backward()
        optimizer.first_step(zero_grad=True)
        two_step_model().backward()
        optimizer.second_step(zero_grad=True)
    np.testing.assert_array_equal(two_step_model.flat().detach().numpy(), weights)

    expected = bsam_reference(matrix, start, shifts, 5, settings["num_data"], settings["lr"],
                              settings["betas"], settings["weight_decay"], settings["damping"],
                              settings["s_init"])
    assert_moved_and_close(weights, expected, start)


def test_bsam_first_step_without_the_noisy_pass_raises(make_shifted):
    model = make_shifted()
    optimizer = BSAM(model.parameters(), num_data=10, seed=0)
    model().backward()
    with pytest.raises(RuntimeError, match="noisy_weights"):
        optimizer.first_step(zero_grad=True)
    with optimizer.noisy_weights():  # and the weights come back bit for bit
        assert not torch.equal(model.a, make_shifted().a)
    torch.testing.assert_close(model.a, make_shifted().a, rtol=0, atol=0)


# -- ASAM's official operator ---------------------------------------------------------------------


class NamedQuadratic(nn.Module):
    """The quadratic with a 2x2 ``weight`` and a 3-entry ``bias``, for name-based scaling."""

    def __init__(self, matrix: np.ndarray, start: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.tensor(matrix))
        self.weight = nn.Parameter(torch.tensor(start[:4]).reshape(2, 2))
        self.bias = nn.Parameter(torch.tensor(start[4:]))

    def forward(self) -> torch.Tensor:
        w = torch.cat([self.weight.reshape(-1), self.bias])
        return 0.5 * w @ self.matrix @ w


def asam_official_reference(matrix, start, eta, steps, lr):
    """SamsungLabs/ASAM's ascent step: T = |w| + eta on parameters named 'weight', 1 on biases;
    e = rho T^2 g / ||T g||; then SGD with the gradient at w + e."""
    w = start.copy()
    is_weight = np.array([True] * 4 + [False] * 3)
    for _ in range(steps):
        g = matrix @ w
        t = np.where(is_weight, np.abs(w) + eta, 1.0)
        e = RHO * t * t * g / np.linalg.norm(t * g)
        w = w - lr * (matrix @ (w + e))
    return w


def test_asam_official_operator(quadratic_problem):
    matrix, start = quadratic_problem
    start = start.copy()
    start[4] = 0.0  # a zero bias: the official operator perturbs it, eta=0 on all would not
    weights = {}
    for name, options in {"official": dict(eta=0.01, weights_only=True),
                          "default": dict()}.items():
        model = NamedQuadratic(matrix, start)
        optimizer = ASAM(model.named_parameters(), torch.optim.SGD, rho=RHO, lr=0.05, **options)
        model().backward()
        optimizer.first_step(zero_grad=True)
        weights[name + "-perturbed"] = model.bias.detach().numpy().copy()
        model().backward()
        optimizer.second_step(zero_grad=True)
        for _ in range(2):
            model().backward()
            optimizer.first_step(zero_grad=True)
            model().backward()
            optimizer.second_step(zero_grad=True)
        weights[name] = torch.cat([model.weight.reshape(-1), model.bias]).detach().numpy()
    expected = asam_official_reference(matrix, start, 0.01, 3, 0.05)
    assert_moved_and_close(weights["official"], expected, start)
    assert weights["official-perturbed"][0] != 0.0
    assert weights["default-perturbed"][0] == 0.0
    assert np.abs(weights["default"] - expected).max() > 1e-6


def test_asam_weights_only_needs_names(quadratic_problem):
    matrix, start = quadratic_problem
    model = NamedQuadratic(matrix, start)
    with pytest.raises(ValueError, match="weights_only=True tells weights from biases by "
                                         "parameter name"):
        ASAM(model.parameters(), torch.optim.SGD, eta=0.01, weights_only=True, lr=0.1)
    with pytest.raises(ValueError, match=r"eta must be >= 0, got -0.1"):
        ASAM(model.parameters(), torch.optim.SGD, eta=-0.1, lr=0.1)


# -- IRE over the variants ------------------------------------------------------------------------


def ire_amplified(step, mask, kappa):
    """IRE's rule over any step: w_new + kappa m (w_new - w_old)."""
    def amplified(w, *args):
        new = step(w, *args)
        return new + kappa * mask * (new - w)
    return amplified


def test_ire_over_gsam_two_step(make_shifted, quadratic_problem, shifts, reference):
    matrix, start = quadratic_problem
    diag = np.arange(7.0)[::-1].copy()  # the last coordinates flattest
    mask = np.zeros(7)
    mask[-3:] = 1.0  # round(0.4 * 7) = 3 flattest

    def gsam_step(w, b, state):
        g = matrix @ w + b
        g_p = matrix @ (w + RHO * g / np.linalg.norm(g)) + b
        g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
        return reference.sgd(w, g_p - 0.3 * g_perp, state, lr=0.05, momentum=0.9)

    step = ire_amplified(gsam_step, mask, 1.5)
    w, state = start.copy(), {}
    for b in shifts:
        w = step(w, b, state)

    model = make_shifted()
    optimizer = IRE(GSAM(model.parameters(), torch.optim.SGD, rho=RHO, alpha=0.3, lr=0.05,
                         momentum=0.9), kappa=1.5, gamma=0.4, refresh_every=100)
    optimizer.update_mask([torch.tensor(diag[:4]).reshape(2, 2), torch.tensor(diag[4:])])
    weights, _ = run_two_step(model, optimizer, shifts)
    assert_moved_and_close(weights, w, start)


def test_ire_over_bsam_closure(make_shifted, quadratic_problem, shifts):
    matrix, start = quadratic_problem
    settings = dict(num_data=50, lr=0.05, betas=(0.8, 0.95), weight_decay=1e-2, damping=0.1,
                    s_init=2.0)
    mask = np.zeros(7)
    mask[:3] = 1.0  # zeros rank first, ties to the lower index: the first 3 of 5 zeros
    expected = bsam_reference(matrix, start, shifts, 2, *settings.values(),
                              amplify=lambda old, new: new + 2.0 * mask * (new - old))

    model = make_shifted()
    optimizer = IRE(BSAM(model.parameters(), rho=RHO, seed=2, **settings), kappa=2.0, gamma=0.4,
                    refresh_every=100)
    optimizer.update_mask([torch.zeros(2, 2), torch.tensor([0.0, 1.0, 1.0])])
    weights = run_closure(model, optimizer, shifts)
    assert_moved_and_close(weights, expected, start)


# -- the docstrings' first-order steps ------------------------------------------------------------


def test_first_order_steps_are_exact_on_a_quadratic(make_shifted, quadratic_problem):
    """On a quadratic, grad L(w + e) = g + H e exactly, so the docstrings' first-order steps
    (SGD base) hold to rounding for the variants whose formula is linear in e."""
    from samhess.optim import SAM, USAM

    matrix, start = quadratic_problem
    lr, gamma = 0.05, 0.8
    g = matrix @ start
    norm = np.linalg.norm(g)
    t = np.abs(start) + 0.01
    predicted = {
        "sam": start - lr * (g + RHO * matrix @ g / norm),
        "usam": start - lr * (g + RHO * matrix @ g),
        "asam": start - lr * (g + RHO * matrix @ (t * t * g) / np.linalg.norm(t * g)),
        "wsam": start - lr * (g + gamma / (1 - gamma) * RHO * matrix @ g / norm),
    }
    builders = {
        "sam": lambda p: SAM(p, torch.optim.SGD, rho=RHO, lr=lr),
        "usam": lambda p: USAM(p, torch.optim.SGD, rho=RHO, lr=lr),
        "asam": lambda p: ASAM(p, torch.optim.SGD, rho=RHO, eta=0.01, lr=lr),
        "wsam": lambda p: WSAM(p, torch.optim.SGD, rho=RHO, gamma=gamma, lr=lr),
    }
    for name, build in builders.items():
        model = make_shifted()
        weights = run_closure(model, build(model.parameters()), np.zeros((1, 7)))
        np.testing.assert_allclose(weights, predicted[name], rtol=0, atol=1e-13, err_msg=name)


def test_msam_first_order_step_is_exact_on_quadratics(micro_batch_problem):
    matrices, offsets, start = micro_batch_problem
    lr = 0.05
    predicted = start.copy()
    for a, b in zip(matrices, offsets):
        g_i = a @ start + b
        predicted -= lr / 4 * (g_i + RHO * a @ g_i / np.linalg.norm(g_i))
    model = MicroBatchQuadratics(matrices, offsets, start)
    optimizer = MSAM(model.parameters(), torch.optim.SGD, rho=RHO, m=4, lr=lr)

    def closure(index):
        optimizer.zero_grad()
        loss = model(index)
        loss.backward()
        return loss

    optimizer.step(closure)
    np.testing.assert_allclose(model.w.detach().numpy(), predicted, rtol=0, atol=1e-13)


def test_looksam_reuse_step_first_order(make_shifted, quadratic_problem):
    """A reuse step right after the SAM step at the same point: g_v = rho (I - u u^T) H g/||g||
    exactly on a quadratic, so the step adds alpha ||g|| along that direction's unit vector."""
    matrix, start = quadratic_problem
    model = make_shifted()
    optimizer = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=2, alpha=0.7, lr=0.0)
    run_two_step(model, optimizer, np.zeros((1, 7)))  # t = 0 at lr 0: stores g_v, stays at w
    optimizer.param_groups[0]["lr"] = 0.05
    weights, passes = run_two_step(model, optimizer, np.zeros((1, 7)))
    g = matrix @ start
    unit = g / np.linalg.norm(g)
    orthogonal = matrix @ g - (unit @ matrix @ g) * unit
    predicted = start - 0.05 * (g + 0.7 * np.linalg.norm(g) * orthogonal
                                / np.linalg.norm(orthogonal))
    assert passes == 1
    np.testing.assert_allclose(weights, predicted, rtol=0, atol=1e-13)
