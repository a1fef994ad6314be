"""Settings shared by the whole test suite."""

import os

# The models under test are tiny; on a 2-core machine intra-op threads cost more in contention
# than they win in parallelism (measured: the curvature tests took 10 s on one thread, over 100 s
# on two while other work shared the cores). Set before torch starts its pools, and exported so
# the command-line subprocesses that tests launch inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# ``token_models`` (a tiny causal transformer, padded token batches and dense references) is
# shared by the curvature, analysis and tracker tests; ``--import-mode=importlib`` puts no test
# folder on ``sys.path``, so it is registered here.
import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

_spec = importlib.util.spec_from_file_location("token_models", Path(__file__).resolve().parent / "token_models.py")
_token_models = importlib.util.module_from_spec(_spec)
sys.modules["token_models"] = _token_models
_spec.loader.exec_module(_token_models)
