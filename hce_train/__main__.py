"""``python -m hce_train`` (what ``torchrun -m hce_train fit ...`` runs on every rank)."""

from .cli import main

main()
