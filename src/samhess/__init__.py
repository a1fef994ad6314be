"""samhess: sharpness-aware optimizers and the Hessian analysis behind them.

Layers, each importing only from those before it:

* :mod:`samhess.optim` -- SAM, USAM, ASAM and IRE over any base optimizer;
* :mod:`samhess.curvature` -- Hessian, GGN and Fisher operators and the estimators on them;
* :mod:`samhess.analysis` -- the seed note's claims turned into measurements;
* :mod:`samhess.experiments` -- data sets, models, the tracked training loop and reports;
* :class:`samhess.Tracker` (:mod:`samhess.tracker`) -- the same tracking in your own loop;
* :mod:`samhess.cli` -- the ``samhess`` command.

:mod:`samhess.integrations` sits beside them, on :mod:`samhess.optim`: Lightning and the Hugging
Face ``Trainer``, each imported only with its own module.
"""

# The package's only version number: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"


def __getattr__(name: str):
    # The tracker stands on the experiments layer; importing it only when it is asked for keeps
    # ``import samhess.curvature`` (and every lower layer) free of that layer.
    if name == "Tracker":
        from samhess.tracker import Tracker

        return Tracker
    raise AttributeError(f"module 'samhess' has no attribute {name!r}")


__all__ = ["Tracker", "__version__"]
