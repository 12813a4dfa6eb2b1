"""``python -m asyncjobs`` runs the command line."""

from .cli import main

main()
