"""Where the seed note's picture of SAM holds, measured on scikit-learn's digits.

Trains an MLP 64-32-10 in float64 (pixels scaled to [0, 1]) with a tanh and with a ReLU hidden
layer, each by three recipes until the training loss is below 0.1 (``digits_mlp.py``):
full-batch Adam, full-batch gradient descent and mini-batch SGD, and prints for each model:

* how the training left the gradient: the share of ||g||^2 (full batch) in the top-5 Hessian
  eigenspace, and SAM's first-order factor along v_1 against the seed note's unnormalized one;
* the validity map: SAM's measured gain along the top-5 Hessian eigenvectors of the batch
  against the first-order 1 + rho lambda / ||g||, over batch sizes and radii
  (:func:`samhess.analysis.validity_map`);
* the gains along the top-5 full-batch eigenvectors at rho = 0.05 to first order, measured, and
  to second order (:func:`samhess.analysis.second_order_gains`), with each eigenvector's
  alignment <v, g>/||g||, and what ``sharp_flat_gains`` reports there;
* the Taylor check of SAM's gradient at batch 128 and on the full batch (order ~ 1 where the
  expansion holds);
* the sharp/flat gain ratios of SGD, SAM, USAM, IRE/SGD, AdamW, IRE/AdamW (against the gradient
  step and against its own AdamW step) and SAM-IRE at batch 128, with the sharp share;
* IRE's Fisher-diagonal mask at gamma = 0.5 to 0.99: how much of each sharp eigenvector it calls
  flat, how much of the 5 to 600 flattest non-null eigenvectors it holds, and how much of it is
  inert (exactly zero gradient and curvature);
* the Monte-Carlo check of E[e^T H e] = sigma^2 Tr H, beside what SAM's e sees;
* the mini-batch decomposition of SAM's extra term at batch 128.

Run from the repository root with one thread (about 2 minutes on one CPU core):

    OMP_NUM_THREADS=1 python benchmarks/seed_validity.py            # 2 activations x 3 recipes
    OMP_NUM_THREADS=1 python benchmarks/seed_validity.py --recipe gd --activation tanh --seed 1
    OMP_NUM_THREADS=1 python benchmarks/seed_validity.py --plot-dir validity_plots  # also PNGs

The numbers quoted in docs/theory.md come from this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from samhess.analysis import (
    format_validity_table,
    ire_mask_quality,
    minibatch_decomposition,
    plot_validity,
    second_order_gains,
    sharp_flat_gains,
    smallest_magnitude_eigenpairs,
    taylor_check,
    trace_identity_check,
    validity_map,
)
from samhess.curvature import HessianOperator, eigenpairs, fisher_diagonal
from samhess.optim import IRE, SAM, USAM

# Run as a script, so benchmarks/ is the first entry of sys.path.
from digits_mlp import RECIPES, scaled_digits, train_digits_mlp  # noqa: E402

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
BATCH_SIZES = [32, 128, 512, None]
RHOS = [0.001, 0.01, 0.05, 0.2, 1.0]
TAYLOR_RHOS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
SECOND_ORDER_RHO = 0.05
MASK_GAMMAS = [0.5, 0.6, 0.8, 0.9, 0.99]
FLAT_COUNTS = [5, 50, 200, 600]
K = 5


def _fisher_mask(model, loss_fn, batch, inner, gamma: float, seed: int) -> IRE:
    wrapped = IRE(inner, kappa=2.0, gamma=gamma)
    wrapped.update_mask(fisher_diagonal(model, loss_fn, batch, num_samples=4,
                                        generator=torch.Generator().manual_seed(seed)))
    return wrapped


def sharp_flat_table(model, loss_fn, batch, top, seed: int) -> list[str]:
    params = list(model.parameters())

    def ire(inner):
        return _fisher_mask(model, loss_fn, batch, inner, 0.5, seed)

    ire_adamw = ire(torch.optim.AdamW(params, lr=1e-3))
    rows = [  # (name, optimizer, reference); reference None is the gradient step -lr g
        ("SGD", torch.optim.SGD(params, lr=0.1), None),
        ("SAM", SAM(params, torch.optim.SGD, rho=0.01, lr=0.1), None),
        ("USAM", USAM(params, torch.optim.SGD, rho=0.05, lr=0.1), None),
        ("IRE/SGD", ire(torch.optim.SGD(params, lr=0.1)), None),
        ("AdamW", torch.optim.AdamW(params, lr=1e-3), None),
        ("IRE/AdamW", ire_adamw, None),
        ("IRE/AdamW vs its AdamW", ire_adamw, ire_adamw.optimizer),
        ("SAM-IRE", ire(SAM(params, torch.optim.SGD, rho=0.01, lr=0.1)), None),
    ]
    lines = [f"  {'optimizer':<23} {'sharp':>9} {'flat':>9} {'ratio':>8} {'predicted':>10} "
             f"{'sharp share':>12}"]
    for name, optimizer, reference in rows:
        r = sharp_flat_gains(model, loss_fn, batch, optimizer, k=K, reference=reference, sharp=top)
        predicted = "-" if r.predicted_ratio is None else f"{r.predicted_ratio:.4f}"
        lines.append(f"  {name:<23} {r.sharp_gain:>9.4f} {r.flat_gain:>9.4f} {r.ratio:>8.4f} "
                     f"{predicted:>10} {r.sharp_share:>12.2e}")
    return lines


def mask_table(model, loss_fn, batch, top, seed: int) -> list[str]:
    """IRE's Fisher mask at several gamma against the batch Hessian's eigenvectors."""
    params = list(model.parameters())
    gradient = HessianOperator(model, loss_fn, batch).gradient()
    flat_values, flat = smallest_magnitude_eigenpairs(model, loss_fn, batch, max(FLAT_COUNTS),
                                                      skip_null=True)
    bounds = ", ".join(f"{n}: |lambda| <= {float(flat_values[n - 1].abs()):.0e}"
                       for n in FLAT_COUNTS)
    lines = [f"  flat: mean mass on the mask of the n flattest non-null eigenvectors ({bounds})",
             f"  {'gamma':>6} {'sharp mass on mask':<38} {'sharp/gamma':>11} "
             + " ".join(f"{f'flat n={n}':>10}" for n in FLAT_COUNTS)
             + f" {'inert share':>11} {'inert overall':>13}"]
    for gamma in MASK_GAMMAS:
        ire = _fisher_mask(model, loss_fn, batch, torch.optim.SGD(params, lr=0.1), gamma, seed)
        q = ire_mask_quality(ire, top, flat, gradient=gradient, curvature_diagonal=ire.estimate)
        masses = "[" + ", ".join(f"{m:.3f}" for m in q.sharp_mass_on_mask) + "]"
        flat_means = " ".join(f"{sum(q.flat_mass_on_mask[:n]) / n:>10.3f}" for n in FLAT_COUNTS)
        lines.append(f"  {q.mask_fraction:>6.3f} {masses:<38} {q.sharp_separation:>11.3f} "
                     f"{flat_means} {q.mask_inert_share:>11.3f} {q.inert_fraction:>13.3f}")
    return lines


def report(activation: str, recipe: str, data, seed: int, plot_dir: Path | None) -> None:
    inputs, labels = data
    model, loss_fn, steps = train_digits_mlp(data, ACTIVATIONS[activation], seed, recipe=recipe,
                                             max_steps=20000)
    with torch.no_grad():
        loss = loss_fn(model(inputs), labels).item()
    optimizer_class, lr, batch_size = RECIPES[recipe]
    how = "full batch" if batch_size is None else f"batches of {batch_size}"
    print(f"\n=== MLP 64-32-10 ({activation}), {recipe}: {optimizer_class.__name__} lr {lr:g}, "
          f"{how}, {steps} steps, training loss {loss:.4f}, seed {seed} ===")

    full_top = eigenpairs(HessianOperator(model, loss_fn, data), K, which="largest", seed=seed)
    full_gradient = HessianOperator(model, loss_fn, data).gradient()
    grad_norm = float(full_gradient.norm())
    cosines = (full_top.eigenvectors.T @ full_gradient) / grad_norm
    lambda_max = float(full_top.eigenvalues[0])
    print(f"full batch: ||g|| {grad_norm:.4f}, lambda_max {lambda_max:.3f}; share of ||g||^2 in "
          f"the top-{K} eigenspace {float(cosines.square().sum()):.2e}; |<v_i, g>|/||g|| "
          f"{[float(f'{abs(c):.1e}') for c in cosines]}")
    print(f"SAM's first-order factor along v_1 at rho {SECOND_ORDER_RHO}: 1 + rho lambda/||g|| = "
          f"{1 + SECOND_ORDER_RHO * lambda_max / grad_norm:.3f}; the seed note's unnormalized "
          f"(I + rho H): 1 + rho lambda = {1 + SECOND_ORDER_RHO * lambda_max:.3f}")

    vmap = validity_map(model, loss_fn, data, RHOS, BATCH_SIZES, k=K, seed=seed)
    print("\nValidity map (SAM over SGD; errors |measured - (1 + x)| / |1 + x| over the top-5 "
          "eigenvectors; 'sub err' for the sharp subspace gain; ratio = sharp/flat gain, "
          "'pred' its first-order value; 'g share' the share of ||g||^2 in the top-5 eigenspace):")
    print(format_validity_table(vmap))
    if plot_dir is not None:
        for against in ("x", "rho"):
            path = plot_validity(vmap, plot_dir / f"validity_{activation}_{recipe}_{against}.png",
                                 against=against)
            print(f"wrote {path}")
    negative = [p for p in vmap.points if p.measured_gain < 0]
    by_rho = {rho: sum(1 for p in negative if p.rho == rho) for rho in RHOS}
    print(f"negative gains (of {len(BATCH_SIZES) * K} per radius): "
          + ", ".join(f"rho {rho:g}: {count}" for rho, count in by_rho.items()))
    for p in sorted(negative, key=lambda p: p.measured_gain)[:3]:
        print(f"  most negative: batch {p.batch_size}, rho {p.rho}, lambda {p.eigenvalue:.3f}: "
              f"measured {p.measured_gain:.3f}, predicted {p.predicted_gain:.3f} "
              f"(|<v, g>|/||g|| = {p.reference_share:.1e})")
    worst = max((p for p in vmap.points if p.rho <= 0.05), key=lambda p: p.gain_error)
    print(f"worst point at rho <= 0.05: batch {worst.batch_size}, rho {worst.rho}, "
          f"lambda {worst.eigenvalue:.3f}, x {worst.x:.3f}: measured {worst.measured_gain:.4f}, "
          f"predicted {worst.predicted_gain:.4f} (|<v, g>|/||g|| = {worst.reference_share:.1e})")

    second = second_order_gains(model, loss_fn, data, SECOND_ORDER_RHO, full_top)
    print(f"\nFull batch, rho {SECOND_ORDER_RHO}: SAM's gain along v_i to first order, measured, "
          f"and to second order (+ 1/2 rho^2 <v, D^3L[g^, g^]> / <v, g>):")
    print(f"  {'i':>2} {'lambda':>7} {'<v,g>/||g||':>12} {'first':>9} {'measured':>9} "
          f"{'second':>9}")
    for i in range(K):
        print(f"  {i + 1:>2} {second.eigenvalues[i]:>7.3f} {second.gradient_cosines[i]:>12.1e} "
              f"{second.first_order[i]:>9.3f} {second.measured[i]:>9.3f} "
              f"{second.second_order[i]:>9.3f}")
    sam = SAM(model.parameters(), torch.optim.SGD, rho=SECOND_ORDER_RHO, lr=0.1)
    flagged = sharp_flat_gains(model, loss_fn, data, sam, k=K, sharp=full_top, seed=seed)
    verdict = (f"ratio {flagged.ratio:.3f}" if not flagged.undefined_reason
               else f"ratio NaN ({flagged.undefined_reason})")
    print(f"  sharp_flat_gains there: {verdict}; predicted {flagged.predicted_ratio:.3f}")

    order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(seed))
    batch = (inputs[order[:128]], labels[order[:128]])
    print("\nTaylor check of grad L(w + e) ~ g + H e (SAM's e), rho in [1e-3, 1e-1]:")
    for name, data_batch in (("batch 128", batch), ("full batch", data)):
        check = taylor_check(model, loss_fn, data_batch, TAYLOR_RHOS)
        errors = ", ".join(f"{e:.2e}" for e in check.grad_rel_error)
        print(f"  {name:<10} order {check.order:.3f}, grad_rel_error [{errors}], "
              f"loss order {check.loss_order:.3f}")

    identity = trace_identity_check(model, loss_fn, batch, sigma=0.01, num_samples=400,
                                    trace_matvecs=150, seed=seed)
    print(f"\nE[e^T H e] = sigma^2 Tr H at batch 128 (sigma 0.01, 400 Gaussian draws): Monte Carlo "
          f"{identity.monte_carlo_mean:.4e} +- {identity.monte_carlo_stderr:.1e}, sigma^2 x Hutch++ "
          f"trace {identity.predicted_mean:.4e} (z = {identity.z_score:.2f}); SAM's e sees "
          f"g^T H g / ||g||^2 = {identity.rayleigh_quotient:.4f} per rho^2, a random e of the same "
          f"norm Tr H / d = {identity.mean_eigenvalue:.2e}")

    top = eigenpairs(HessianOperator(model, loss_fn, batch), K, which="largest", seed=seed)
    print(f"\nSharp (top-{K}) / flat (complement) gains at batch 128 (SAM rho 0.01, USAM rho 0.05,"
          " IRE kappa 2 gamma 0.5, mask from the sampled-label Fisher diagonal):")
    print("\n".join(sharp_flat_table(model, loss_fn, batch, top, seed)))
    print(f"\nIRE's Fisher-diagonal mask at batch 128 against the batch Hessian (random mask: "
          f"gamma for the sharp and flat masses, the overall inert fraction for the inert share):")
    print("\n".join(mask_table(model, loss_fn, batch, top, seed)))

    split = minibatch_decomposition(model, loss_fn, batch, data, 0.01, k=K, seed=seed)
    print(f"\nMini-batch decomposition at batch 128, rho 0.01: ||g_B|| {split.grad_norm_batch:.4f}"
          f", ||g_D|| {split.grad_norm_full:.4f}, ||noise|| {split.noise_norm:.4f}; "
          f"||c H_B g_B|| {split.extra_term_norm:.2e}; "
          f"||c H_B noise|| / ||c H_B g_B|| = {split.noise_share:.3f}, ||c H_B g_D|| / ||c H_B g_B||"
          f" = {split.signal_share:.3f}; ||c H_D g_D|| {split.full_term_norm:.2e}, "
          f"||c (H_B - H_D) g_D|| {split.hessian_noise_term_norm:.2e}; top-{K} subspace overlap "
          f"{split.subspace_overlap:.3f}, principal angles "
          f"{[round(a, 1) for a in split.principal_angles_deg]} deg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activation", choices=[*ACTIVATIONS, "both"], default="both")
    parser.add_argument("--recipe", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-dir", type=Path, default=None,
                        help="write the validity maps as PNGs into this folder")
    args = parser.parse_args()
    data = scaled_digits()
    for activation in (ACTIVATIONS if args.activation == "both" else [args.activation]):
        for recipe in (RECIPES if args.recipe == "all" else [args.recipe]):
            report(activation, recipe, data, args.seed, args.plot_dir)


if __name__ == "__main__":
    main()
