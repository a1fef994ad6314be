"""Where the seed note's picture of SAM holds, measured on scikit-learn's digits.

Trains an MLP 64-32-10 in float64 (full-batch Adam until the training loss is below 0.1, pixels
scaled to [0, 1]) with a tanh and with a ReLU hidden layer, then prints for each:

* the validity map: SAM's measured gain along the top-5 Hessian eigenvectors of the batch
  against the first-order 1 + rho lambda / ||g||, over batch sizes and radii
  (:func:`samhess.analysis.validity_map`);
* the Taylor check of SAM's gradient at batch 128 and on the full batch (order ~ 1 where the
  expansion holds);
* the sharp/flat gain ratios of SGD, SAM, USAM, IRE/SGD, AdamW, IRE/AdamW (against the gradient
  step and against its own AdamW step) and SAM-IRE at batch 128, and how much of each sharp
  eigenvector IRE's mask calls flat;
* the Monte-Carlo check of E[e^T H e] = sigma^2 Tr H, beside what SAM's e sees;
* the mini-batch decomposition of SAM's extra term at batch 128.

Run from the repository root (about 10 seconds on one CPU core):

    python benchmarks/seed_validity.py                 # both activations
    python benchmarks/seed_validity.py --activation relu --seed 1
    python benchmarks/seed_validity.py --plot-dir validity_plots   # also the validity maps as PNGs

The numbers quoted in docs/theory.md come from ``python benchmarks/seed_validity.py``.
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
    sharp_flat_gains,
    taylor_check,
    trace_identity_check,
    validity_map,
)
from samhess.curvature import HessianOperator, eigenpairs, fisher_diagonal
from samhess.optim import IRE, SAM, USAM

# Run as a script, so benchmarks/ is the first entry of sys.path.
from digits_mlp import scaled_digits, train_digits_mlp  # noqa: E402

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
BATCH_SIZES = [32, 128, 512, None]
RHOS = [0.001, 0.01, 0.05, 0.2, 1.0]
TAYLOR_RHOS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
K = 5


def sharp_flat_table(model, loss_fn, batch, seed: int) -> list[str]:
    params = list(model.parameters())
    top = eigenpairs(HessianOperator(model, loss_fn, batch), K, which="largest", seed=seed)

    def ire(inner):
        wrapped = IRE(inner, kappa=2.0, gamma=0.5)
        wrapped.update_mask(fisher_diagonal(model, loss_fn, batch, num_samples=4,
                                            generator=torch.Generator().manual_seed(seed)))
        return wrapped

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
    lines = [f"  {'optimizer':<23} {'sharp':>9} {'flat':>9} {'ratio':>8} {'predicted':>10}"]
    for name, optimizer, reference in rows:
        r = sharp_flat_gains(model, loss_fn, batch, optimizer, k=K, reference=reference, sharp=top)
        predicted = "-" if r.predicted_ratio is None else f"{r.predicted_ratio:.4f}"
        lines.append(f"  {name:<23} {r.sharp_gain:>9.4f} {r.flat_gain:>9.4f} {r.ratio:>8.4f} "
                     f"{predicted:>10}")
    quality = ire_mask_quality(rows[3][1], top)
    lines.append(f"  IRE mask: share of each top-{K} eigenvector's mass on flat-called coordinates "
                 f"{[round(m, 3) for m in quality.sharp_mass_on_mask]} (random mask: "
                 f"{quality.mask_fraction:.2f}); flat-subspace coverage {quality.flat_coverage:.3f}")
    return lines


def report(activation: str, data, seed: int, plot_dir: Path | None) -> None:
    inputs, labels = data
    model, loss_fn, steps = train_digits_mlp(data, ACTIVATIONS[activation], seed)
    with torch.no_grad():
        loss = loss_fn(model(inputs), labels).item()
    print(f"\n=== MLP 64-32-10 ({activation}), {steps} Adam steps, training loss {loss:.4f}, "
          f"seed {seed} ===")
    vmap = validity_map(model, loss_fn, data, RHOS, BATCH_SIZES, k=K, seed=seed)
    print("\nValidity map (SAM over SGD; errors |measured - (1 + x)| / |1 + x| over the top-5 "
          "eigenvectors; 'sub err' for the sharp subspace gain; ratio = sharp/flat gain, "
          "'pred' its first-order value; 'g share' the share of ||g||^2 in the top-5 eigenspace):")
    print(format_validity_table(vmap))
    if plot_dir is not None:
        for against in ("x", "rho"):
            path = plot_validity(vmap, plot_dir / f"validity_{activation}_{against}.png",
                                 against=against)
            print(f"wrote {path}")
    worst = max((p for p in vmap.points if p.rho <= 0.05), key=lambda p: p.gain_error)
    negative = [p for p in vmap.points if p.measured_gain < 0]
    for p in negative:
        print(f"negative gain: batch {p.batch_size}, rho {p.rho}, lambda {p.eigenvalue:.3f}: "
              f"measured {p.measured_gain:.3f}, predicted {p.predicted_gain:.3f} "
              f"(|<v, g>|/||g|| = {p.reference_share:.3f})")
    print(f"worst point at rho <= 0.05: batch {worst.batch_size}, rho {worst.rho}, "
          f"lambda {worst.eigenvalue:.3f}"
          f", x {worst.x:.3f}: measured {worst.measured_gain:.4f}, predicted "
          f"{worst.predicted_gain:.4f} (|<v, g>|/||g|| = {worst.reference_share:.3f})")

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

    print(f"\nSharp (top-{K}) / flat (complement) gains at batch 128 (SAM rho 0.01, USAM rho 0.05,"
          " IRE kappa 2 gamma 0.5, mask from the sampled-label Fisher diagonal):")
    print("\n".join(sharp_flat_table(model, loss_fn, batch, seed)))

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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-dir", type=Path, default=None,
                        help="write the validity maps as PNGs into this folder")
    args = parser.parse_args()
    data = scaled_digits()
    for activation in (ACTIVATIONS if args.activation == "both" else [args.activation]):
        report(activation, data, args.seed, args.plot_dir)


if __name__ == "__main__":
    main()
