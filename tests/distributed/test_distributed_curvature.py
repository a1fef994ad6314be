"""Curvature over data sharded across two gloo ranks equals the single-process answer on all of
it: Hessian- and GGN-vector products, the top eigenpairs, the Hutch++ trace (same probes) and the
spectral density."""

from __future__ import annotations

import pytest
import torch

from .conftest import load_module, rank_results

pytestmark = pytest.mark.distributed
worker = load_module("curvature_worker")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return rank_results(tmp_path_factory, "curvature_worker")


@pytest.fixture(scope="module")
def single_process():
    return worker.measure(worker.build_model(), worker.dataset())


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_the_ranks_split_the_data(ranks):
    assert [r["shard"] for r in ranks] == [(0, 11), (11, 21)]


@pytest.mark.parametrize("key", ["hvp", "hvp_matrix", "ggn_matrix"])
def test_products_equal_the_single_process_products(ranks, single_process, key):
    for rank in ranks:
        assert _relative(rank["sharded"][key], single_process[key]) < 1e-12
    # what one shard alone gives is far from it: the reduction is doing the work
    assert _relative(ranks[0]["local"]["hvp"], single_process["hvp"]) > 1e-2


def test_top_eigenpairs_equal_the_single_process_ones(ranks, single_process):
    expected = single_process["eigenvalues"]
    for rank in ranks:
        result = rank["sharded"]
        assert torch.allclose(result["eigenvalues"], expected, rtol=1e-9, atol=0)
        overlaps = (result["eigenvectors"] * single_process["eigenvectors"]).sum(0).abs()
        assert torch.allclose(overlaps, torch.ones_like(overlaps), atol=1e-7)


def test_hutch_plus_plus_trace_with_the_same_probes(ranks, single_process):
    for rank in ranks:
        assert rank["sharded"]["trace"] == pytest.approx(single_process["trace"], rel=1e-10)
        assert rank["sharded"]["trace_stderr"] == pytest.approx(
            single_process["trace_stderr"], rel=1e-8, abs=1e-12)


def test_spectral_density_equals_the_single_process_one(ranks, single_process):
    for rank in ranks:
        assert _relative(rank["sharded"]["density"], single_process["density"]) < 1e-8


def test_every_rank_gets_the_same_bits(ranks):
    for key, value in ranks[0]["sharded"].items():
        other = ranks[1]["sharded"][key]
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), key


def test_an_empty_shard_fails_on_every_rank(ranks):
    for rank in ranks:
        assert "1 rank(s) hold no examples of the ShardedData" in rank.get("empty_error", "")
