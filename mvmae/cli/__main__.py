"""``python -m mvmae.cli`` (torchrun launches it this way)."""

from mvmae.cli import main

main()
