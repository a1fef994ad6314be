"""SAM and IRE under DistributedDataParallel on two gloo ranks against single-process answers.

One ``torchrun`` launch trains every case (``ddp_worker.py``); each test compares what the ranks
saved with a computation done here, in one process, on the concatenated global batches.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from samhess.optim import SAM, flattest_coordinates_mask

from .conftest import HERE, load_module, torchrun

pytestmark = pytest.mark.distributed
worker = load_module("ddp_worker")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-training")
    torchrun([str(HERE / "ddp_worker.py"), str(out)])
    return [torch.load(out / f"rank-{r}.pt") for r in range(2)]


def _max_difference(left: list[torch.Tensor], right: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(left, right, strict=True))


def sam_by_hand(shards_of: Callable) -> tuple[list[torch.Tensor], list[float]]:
    r"""SAM over SGD with momentum, written out: for every step, the shards' SAM gradients

    G_r = \nabla L_r(w + \rho g_r / \|g_r\|),  g_r = \nabla L_r(w),

    averaged with weights n_r / n, then buf <- momentum buf + G, w <- w - lr buf.
    """
    model = worker.build_model()
    params = list(model.parameters())
    buffers = None
    losses = []

    def gradient(at, inputs, targets):
        with torch.no_grad():
            for p, value in zip(params, at):
                p.copy_(value)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        return loss.detach(), torch.autograd.grad(loss, params)

    weights = [p.detach().clone() for p in params]
    for inputs, targets in worker.global_batches():
        shards = shards_of(inputs, targets)
        total = inputs.shape[0]
        step = [torch.zeros_like(w) for w in weights]
        step_loss = 0.0
        for x, y in shards:
            loss, g = gradient(weights, x, y)
            norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
            perturbed = [w + worker.RHO * gi / norm for w, gi in zip(weights, g)]
            _, sam_gradient = gradient(perturbed, x, y)
            for s, gi in zip(step, sam_gradient):
                s.add_(gi, alpha=x.shape[0] / total)
            step_loss += float(loss) * x.shape[0] / total
        losses.append(step_loss)
        if buffers is None:
            buffers = [s.clone() for s in step]
        else:
            buffers = [worker.MOMENTUM * b + s for b, s in zip(buffers, step)]
        weights = [w - worker.LR * b for w, b in zip(weights, buffers)]
    return weights, losses


def whole_batch(inputs, targets):
    return [(inputs, targets)]


def two_halves(inputs, targets):
    # the contiguous split of shard_batch: 16 -> 8 + 8, 15 -> 8 + 7
    first = (inputs.shape[0] + 1) // 2
    return [(inputs[:first], targets[:first]), (inputs[first:], targets[first:])]


def single_process_sam() -> tuple[list[torch.Tensor], list[float]]:
    model = worker.build_model()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=worker.RHO, lr=worker.LR,
                    momentum=worker.MOMENTUM)
    losses = []
    for inputs, targets in worker.global_batches():
        def closure():
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            return loss
        losses.append(float(optimizer.step(closure).detach()))
    return [p.detach().clone() for p in model.parameters()], losses


def test_two_ranks_ran(ranks):
    assert [r["world_size"] for r in ranks] == [2, 2]


def test_a_decision_on_rank_zero_reaches_every_rank(ranks):
    for rank in ranks:
        assert rank["on_main_process"] == {"value": 0, "error": "refused on rank 0"}


def test_global_perturbation_equals_single_process_sam_on_the_whole_batch(ranks):
    reference, reference_losses = single_process_sam()
    by_hand, _ = sam_by_hand(whole_batch)
    # the reference itself is what the formula says
    assert _max_difference(reference, by_hand) < 1e-6
    start = [p.detach() for p in worker.build_model().parameters()]
    assert _max_difference(reference, start) > 1e-2  # ten steps moved the weights
    for rank in ranks:
        result = rank["sam_global"]
        assert _max_difference(result["parameters"], reference) < 1e-6
        assert result["losses"] == pytest.approx(reference_losses, rel=1e-6, abs=0)
    assert _max_difference(ranks[0]["sam_global"]["parameters"],
                           ranks[1]["sam_global"]["parameters"]) == 0.0


def test_per_replica_perturbation_averages_the_shards_sam_gradients(ranks):
    per_replica, losses = sam_by_hand(two_halves)
    global_reference, _ = sam_by_hand(whole_batch)
    # the two modes differ by more than the tolerance, so the comparison below can tell them apart
    assert _max_difference(per_replica, global_reference) > 1e-4
    for rank in ranks:
        result = rank["sam_per_replica"]
        assert _max_difference(result["parameters"], per_replica) < 1e-6
        assert result["losses"] == pytest.approx(losses, rel=1e-6, abs=0)
    assert _max_difference(ranks[0]["sam_per_replica"]["parameters"],
                           ranks[1]["sam_per_replica"]["parameters"]) == 0.0


def test_ire_masks_are_identical_on_both_ranks(ranks):
    first, second = ranks[0]["ire"], ranks[1]["ire"]
    assert len(first["masks"]) == len(second["masks"]) == -(-worker.STEPS // worker.IRE_REFRESH)
    for mask_0, mask_1 in zip(first["masks"], second["masks"]):
        assert all(torch.equal(a, b) for a, b in zip(mask_0, mask_1))
        selected = sum(int(m.sum()) for m in mask_0)
        assert selected == round(worker.IRE_GAMMA * sum(m.numel() for m in mask_0))
    # the ranks' own estimates would have chosen different masks: the all-reduce is what aligns them
    assert any(
        not all(torch.equal(a, b) for a, b in zip(local_0, local_1))
        for local_0, local_1 in zip(first["local_masks"], second["local_masks"])
    )
    assert _max_difference(first["parameters"], second["parameters"]) == 0.0


def test_ire_estimate_is_the_shard_size_weighted_mean(ranks):
    first, second = ranks[0]["ire"], ranks[1]["ire"]
    for index, estimate in enumerate(first["estimates"]):
        n_0, n_1 = first["sizes"][index], second["sizes"][index]
        expected = [(n_0 * a + n_1 * b) / (n_0 + n_1)
                    for a, b in zip(first["local_estimates"][index],
                                    second["local_estimates"][index])]
        assert _max_difference(estimate, expected) <= 1e-6 * max(float(e.max()) for e in expected)
        assert all(torch.equal(m, r) for m, r in zip(
            first["masks"][index], flattest_coordinates_mask(estimate, worker.IRE_GAMMA)))
    assert first["sizes"] != second["sizes"]  # the 15-example batches split 8 + 7


def single_process_run_loop(name: str) -> tuple[list[torch.Tensor], list[float]]:
    from samhess.experiments.optimizer_kinds import build_optimizer, optimizer_kind
    from samhess.experiments.training_step import StepContext, training_step

    model = worker.build_model()
    optimizer = build_optimizer(name, model, {
        "lr": worker.LR, "momentum": worker.MOMENTUM, "rho": worker.RHO,
        "kappa": worker.IRE_KAPPA, "gamma": worker.IRE_GAMMA, "refresh_every": worker.IRE_REFRESH})
    context = StepContext(kind=optimizer_kind(name), optimizer=optimizer, model=model,
                          loss_fn=nn.functional.cross_entropy,
                          label_generator=torch.Generator().manual_seed(7))
    losses = [training_step(context, batch) for batch in worker.global_batches()]
    return [p.detach().clone() for p in model.parameters()], losses


def test_run_loop_sgd_step_on_two_ranks_equals_one_process(ranks):
    reference, losses = single_process_run_loop("sgd")
    for rank in ranks:
        result = rank["run_loop_sgd"]
        assert _max_difference(result["parameters"], reference) < 1e-6
        assert result["losses"] == pytest.approx(losses, rel=1e-6, abs=0)


def test_run_loop_ire_refresh_gives_every_rank_one_mask_and_one_label_stream(ranks):
    first, second = ranks[0]["run_loop_sam_ire"], ranks[1]["run_loop_sam_ire"]
    assert len(first["masks"]) == -(-worker.STEPS // worker.IRE_REFRESH)
    for mask_0, mask_1 in zip(first["masks"], second["masks"], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mask_0, mask_1))
    # the shared generator advanced alike on both ranks, so rank 0's checkpoint restores both
    assert torch.equal(first["generator_state"], second["generator_state"])
    assert _max_difference(first["parameters"], second["parameters"]) == 0.0
    assert first["losses"] == second["losses"]
