"""``python -m mvmae``: the ``mvmae`` command."""

from mvmae.cli import main

main()
