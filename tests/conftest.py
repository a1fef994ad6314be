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
