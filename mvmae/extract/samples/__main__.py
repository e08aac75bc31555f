"""``python -m mvmae.extract.samples`` prints the bundled sample's path (for shell use)."""

from mvmae.extract.samples import sample_path

print(sample_path())
