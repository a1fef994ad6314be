"""Per-rank cost of one tracked record's curvature under torchrun, 1 process against N.

``samhess run`` under torchrun measures a record's eigenvalues, trace and gradient over each
rank's shard of the tracking batch and all-reduces the products
(:func:`samhess.experiments.tracking.curvature_data`). This script launches
``torchrun --nproc-per-node P`` for each P of ``--processes`` on the same model and tracking
batch, and prints each rank's process CPU time of the curvature part of a record (median over
``--repeats``), and its ratio to one process's.

    OMP_NUM_THREADS=1 python benchmarks/bench_sharded_tracking.py
    OMP_NUM_THREADS=1 python benchmarks/bench_sharded_tracking.py --processes 1,2 --batch 1024

Process CPU time, not wall time: on a machine with fewer free cores than ranks the ranks wait on
each other, which wall time would count and CPU time does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median


def _worker(out: Path, batch: int, repeats: int) -> None:
    import torch
    from torch import nn

    from samhess.distributed import distributed_session, get_rank
    from samhess.experiments.tracking import TrackingSetup, measure_curvature

    with distributed_session():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(),
                              nn.Linear(64, 10))
        generator = torch.Generator().manual_seed(1)
        inputs = torch.randn(batch, 64, generator=generator)
        targets = torch.randint(0, 10, (batch,), generator=generator)
        setup = TrackingSetup(loss_fn=nn.CrossEntropyLoss(), kind="classification",
                              batch=(inputs, targets), train_eval=(inputs, targets),
                              test_eval=(inputs, targets), top_k=3, trace_matvecs=30, seed=0)
        seconds = []
        for _ in range(repeats + 1):  # the first round warms up
            started = time.process_time()
            # Without an optimizer a record is its curvature alone: no gains, no real step.
            measure_curvature(model, None, setup)
            seconds.append(time.process_time() - started)
        (out / f"rank-{get_rank()}.json").write_text(json.dumps(seconds[1:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--batch", type=int, default=1024, help="tracking batch size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(Path(args.worker), args.batch, args.repeats)
        return
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for count in (int(p) for p in args.processes.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run([str(torchrun), "--standalone", f"--nproc-per-node={count}", __file__,
                            "--worker", folder, "--batch", str(args.batch), "--repeats",
                            str(args.repeats)], check=True, env=env, capture_output=True)
            per_rank = [median(json.loads((Path(folder) / f"rank-{r}.json").read_text()))
                        for r in range(count)]
        rows.append((count, max(per_rank)))
    one = rows[0][1]
    print(f"Curvature of one record (top-3 eigenvalues, Hutch++ with 30 products, gradient), "
          f"MLP 64-128-64-10, tracking batch {args.batch}; process CPU time per rank, median of "
          f"{args.repeats}")
    print("| processes | CPU s per rank (slowest rank) | ratio to 1 process |")
    print("| ---: | ---: | ---: |")
    for count, seconds in rows:
        print(f"| {count} | {seconds:.3f} | {seconds / one:.2f} |")


if __name__ == "__main__":
    main()
