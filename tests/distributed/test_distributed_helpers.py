"""The distributed helpers in a single process: the split rule, reductions over a world of one,
argument checks, and ``sam_step`` as the ordinary SAM step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from samhess.distributed import (
    ShardedData,
    distributed_session,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    launched_by_torchrun,
    on_main_process,
    sam_step,
    shard_batch,
    shard_bounds,
    shard_range,
    sum_over_ranks,
    sum_over_shards,
    weighted_mean_over_ranks,
)
from samhess.optim import SAM


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("total", [5, 7, 16, 31])
def test_shard_bounds_follow_tensor_split(total, world_size):
    expected = [len(chunk) for chunk in torch.tensor_split(torch.arange(total), world_size)]
    bounds = [shard_bounds(total, rank, world_size) for rank in range(world_size)]
    assert [stop - start for start, stop in bounds] == expected
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world_size - 1))


@pytest.mark.parametrize("arguments, message", [
    ((3, 0, 4), "cannot split 3 examples across 4 ranks"),
    ((8, 2, 2), "rank must be < world_size"),
    ((8, 0, 0), "world_size must be >= 1"),
    ((-1, 0, 1), "total must be >= 0"),
])
def test_shard_bounds_reject_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        shard_bounds(*arguments)


def test_outside_a_process_group_this_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    assert not launched_by_torchrun()
    assert init_distributed() is False
    assert shard_range(10) == range(10)
    inputs, targets = torch.randn(7, 3), torch.arange(7)
    shard = shard_batch(inputs, targets)
    assert shard.size == shard.total == 7 and shard.loss_scale == 1.0
    assert torch.equal(shard.inputs, inputs) and torch.equal(shard.targets, targets)


def test_one_process_keeps_its_own_sums_and_decisions(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    totals = [torch.ones(3)]
    assert sum_over_shards(ShardedData([]), totals, 4) == (totals, 4)
    assert sum_over_shards([], totals, 4) == (totals, 4)
    assert on_main_process(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ValueError, match="nope"):
        on_main_process(lambda: (_ for _ in ()).throw(ValueError("nope")))
    with distributed_session() as active:
        assert active is False and get_world_size() == 1


def test_malformed_environment_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        init_distributed()
    with pytest.raises(ValueError, match="backend must be one of 'gloo', 'nccl', got 'mpi'"):
        init_distributed("mpi")


def test_shard_batch_rejects_mismatched_batches():
    with pytest.raises(ValueError, match=r"shapes \(4, 2\) and \(3,\)"):
        shard_batch(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(TypeError, match="inputs must be a tensor, got list"):
        shard_batch([1, 2], torch.zeros(2))


def test_reductions_over_one_rank_copy_their_inputs():
    values = [torch.arange(3.0), torch.ones(2, 2, dtype=torch.float64), torch.tensor([4])]
    summed = sum_over_ranks(values)
    assert all(torch.equal(s, v) and s.dtype == v.dtype and s.data_ptr() != v.data_ptr()
               for s, v in zip(summed, values))
    mean = weighted_mean_over_ranks(values[:2], weight=3.0)
    assert all(torch.equal(m, v) for m, v in zip(mean, values[:2]))
    assert torch.equal(weighted_mean_over_ranks(torch.tensor([2.5]), 1.0), torch.tensor([2.5]))


@pytest.mark.parametrize("call, error, message", [
    (lambda: weighted_mean_over_ranks(torch.ones(2), 0.0), ValueError, "weight is 0 on every rank"),
    (lambda: weighted_mean_over_ranks(torch.ones(2), -1.0), ValueError, "weight must be >= 0"),
    (lambda: weighted_mean_over_ranks(torch.arange(2), 1.0), TypeError,
     "values\\[0\\] must be a floating-point tensor"),
    (lambda: weighted_mean_over_ranks([], 1.0), ValueError, "at least one tensor"),
    (lambda: sum_over_ranks("abc"), TypeError, "values must be a tensor or a list of tensors"),
    (lambda: ShardedData(ShardedData([])), TypeError, "already a ShardedData"),
])
def test_reductions_reject_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_sharded_data_iterates_its_local_batches():
    batch = (torch.zeros(2, 3), torch.zeros(2))
    assert [b for b in ShardedData(batch)] == [batch]
    assert [b for b in ShardedData([batch, batch])] == [batch, batch]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()


@pytest.mark.parametrize("per_replica", [False, True])
def test_sam_step_without_ddp_is_the_closure_step(per_replica):
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(6, 4, generator=generator, dtype=torch.float64),
                torch.randint(0, 2, (6,), generator=generator)) for _ in range(3)]
    model, reference = _mlp(), _mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.5)
    expected = SAM(reference.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.5)
    for inputs, targets in batches:
        loss = sam_step(model, optimizer, nn.functional.cross_entropy, inputs, targets,
                        per_replica=per_replica)

        def closure():
            expected.zero_grad()
            value = nn.functional.cross_entropy(reference(inputs), targets)
            value.backward()
            return value

        assert float(loss) == float(expected.step(closure).detach())
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


def test_sam_step_checks_its_options():
    model = _mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    batch = (torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="loss_scale must be > 0, got 0.0"):
        sam_step(model, optimizer, nn.functional.cross_entropy, *batch, loss_scale=0.0)
    with pytest.raises(TypeError, match="per_replica must be a bool, got 1"):
        sam_step(model, optimizer, nn.functional.cross_entropy, *batch, per_replica=1)


def test_sharded_single_batch_keeps_the_cached_graph_and_the_plain_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    batch = (torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 2, (9,)))
    from samhess.curvature import HessianOperator

    plain = HessianOperator(model, nn.CrossEntropyLoss(), batch)
    sharded = HessianOperator(model, nn.CrossEntropyLoss(), ShardedData(batch))
    vector = torch.randn(plain.dim, dtype=torch.float64)
    torch.testing.assert_close(sharded @ vector, plain @ vector, rtol=1e-12, atol=0)
    # the graph of the one local batch is built once and reused, as without ShardedData
    assert sharded._cached_state is not None
