"""``samhess run``'s tracking under torchrun: the curvature of a record computed over the ranks'
shards of the tracking batch equals the single-process record on the whole batch."""

from __future__ import annotations

import pytest

from .conftest import load_module, rank_results

pytestmark = pytest.mark.distributed
worker = load_module("tracking_worker")

_CURVATURE_KEYS = ("lambda_max", "hessian_trace", "hessian_trace_stderr", "grad_norm",
                   "sharp_gradient_share", "top_eigenvector_sign")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return rank_results(tmp_path_factory, "tracking_worker")


@pytest.fixture(scope="module")
def single_process():
    return worker.measure(*worker.build())


def test_each_rank_computes_its_products_on_its_shard_only(ranks, single_process):
    assert [rank["examples_per_product"] for rank in ranks] == [11, 10]
    assert single_process["examples_per_product"] == worker.NUM_EXAMPLES


def test_sharded_record_equals_the_single_process_record(ranks, single_process):
    expected = single_process["record"]
    for rank in ranks:
        record = rank["record"]
        for key in _CURVATURE_KEYS:
            assert record[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
        assert record["eigenvalues"] == pytest.approx(expected["eigenvalues"], rel=1e-9)
        assert record["gradient_alignments"] == pytest.approx(expected["gradient_alignments"],
                                                              rel=1e-7, abs=1e-12)
        # the gains take a real step on the whole batch on every rank
        assert record["gain_ratio"] == pytest.approx(expected["gain_ratio"], rel=1e-9)


def test_sharded_layer_curvature_equals_the_single_process_one(ranks, single_process):
    for rank in ranks:
        for block, expected in zip(rank["layers"], single_process["layers"], strict=True):
            assert block["block"] == expected["block"]
            for key in ("lambda_max", "hessian_trace"):
                assert block[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12)


def test_both_ranks_record_the_same_bits(ranks):
    assert ranks[0]["record"] == ranks[1]["record"]
