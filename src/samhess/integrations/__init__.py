"""Training with samhess's optimizers inside the frameworks people train with.

* :mod:`samhess.integrations.lightning` -- PyTorch Lightning (``SharpnessAwareMixin``);
* :mod:`samhess.integrations.transformers` -- the Hugging Face ``Trainer``
  (``SharpnessAwareTrainer``).

Each module imports its framework when it is imported itself, never before: ``import samhess``
and ``import samhess.integrations`` import neither. The frameworks come with the
``integrations`` extra (``pip install 'samhess[integrations]'``). See ``docs/integrations.md``.
"""
