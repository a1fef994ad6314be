"""``python -m samhess`` runs the command line (also under ``torchrun -m samhess``)."""

from samhess.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
