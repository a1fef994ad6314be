"""SAM, USAM, ASAM and IRE under FSDP2 (``fully_shard``) on two gloo ranks against one process.

One ``torchrun`` launch trains every optimizer on parameters sharded as DTensors
(``fsdp_worker.py``); each test compares what the ranks ended with against the same loop run here
in one process on the whole batches. Agreement to rounding means the global gradient norm, the
perturbation and restore of each shard, and IRE's mask ranked over the full parameter vector are
all what one process computes.
"""

from __future__ import annotations

import pytest
import torch

from samhess.optim import flattest_coordinates_mask

from .conftest import load_module, rank_results

pytestmark = pytest.mark.distributed
worker = load_module("fsdp_worker")

try:
    from torch.distributed.fsdp import fully_shard  # noqa: F401
except ImportError:  # torch older than FSDP2's public API
    pytest.skip("torch.distributed.fsdp.fully_shard is not available", allow_module_level=True)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return rank_results(tmp_path_factory, "fsdp_worker")


@pytest.fixture(scope="module")
def single_process():
    return {kind: worker.train(kind, worker.build_model()) for kind in worker.KINDS}


def _max_difference(left: list[torch.Tensor], right: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(left, right, strict=True))


def test_parameters_are_sharded_dtensors(ranks):
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["parameter_types"] == ranks[1]["parameter_types"] == ["DTensor"]
    # row blocks per rank: 5 -> 3 + 2, 7 -> 4 + 3, 3 -> 2 + 1 (biases alike)
    assert ranks[0]["local_rows"] == [3, 3, 4, 4, 2, 2]
    assert ranks[1]["local_rows"] == [2, 2, 3, 3, 1, 1]


@pytest.mark.parametrize("kind", worker.KINDS)
def test_sharded_training_equals_one_process(ranks, single_process, kind):
    reference = single_process[kind]
    start = [p.detach() for p in worker.build_model().parameters()]
    assert _max_difference(reference["parameters"], start) > 1e-2  # the steps moved the weights
    for rank in ranks:
        result = rank[kind]
        assert _max_difference(result["parameters"], reference["parameters"]) < 1e-12
        assert result["losses"] == pytest.approx(reference["losses"], rel=1e-12, abs=0)
    assert _max_difference(ranks[0][kind]["parameters"], ranks[1][kind]["parameters"]) == 0.0


def test_sam_variants_differ_so_the_comparison_can_tell_them_apart(single_process):
    sam, usam, asam = (single_process[k]["parameters"] for k in ("sam", "usam", "asam"))
    assert _max_difference(sam, usam) > 1e-4
    assert _max_difference(sam, asam) > 1e-4


@pytest.mark.parametrize("kind", ["ire", "sam-ire"])
def test_ire_mask_is_ranked_over_the_full_vector(ranks, single_process, kind):
    reference = single_process[kind]["masks"]
    assert len(reference) == -(-worker.STEPS // worker.IRE_REFRESH)
    for rank in ranks:
        masks = rank[kind]["masks"]
        assert len(masks) == len(reference)
        for mask, expected in zip(masks, reference):
            assert all(torch.equal(a, b) for a, b in zip(mask, expected))
            assert sum(int(m.sum()) for m in mask) == round(
                worker.IRE_GAMMA * sum(m.numel() for m in mask))
    # ranking each rank's shard alone would have chosen other coordinates on some rank
    assert any(
        not all(torch.equal(a.bool(), b) for a, b in zip(local, alone))
        for rank in ranks
        for local, alone in zip(rank[kind]["local_masks"], rank[kind]["local_rankings"])
    )


def test_single_process_mask_is_the_ranking_of_the_squared_gradient(single_process):
    # the reference loop's first mask, recomputed from its definition
    model = worker.build_model()
    inputs, targets = worker.global_batches()[0]
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    expected = flattest_coordinates_mask([p.grad ** 2 for p in model.parameters()], worker.IRE_GAMMA)
    first = single_process["ire"]["masks"][0]
    assert all(torch.equal(a.bool(), b) for a, b in zip(first, expected))


def test_a_non_finite_shard_on_one_rank_is_refused_on_every_rank(ranks):
    """``raise_on_nonfinite`` judges the full gradient: a NaN in rank 1's shard alone makes
    both ranks raise, and finite gradients neither."""
    assert [rank["nonfinite_verdicts"] for rank in ranks] == [[False, True], [False, True]]
