"""``python -m samhess.experiments.trajectories``: the settings tables of docs/cli.md."""

from samhess.experiments.trajectories.registry import experiments_markdown

print(experiments_markdown())
