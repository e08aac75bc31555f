"""Build of mvmae's one C extension (the extraction kernels); everything else is in setup.cfg."""

import sys

from setuptools import Extension, setup

# the same float32 bits as the numpy reference: no fused multiply-add, strict IEEE order
FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-fast-math"]

setup(ext_modules=[
    Extension("mvmae.extract._kernels", ["mvmae/extract/_kernels.c"],
              extra_compile_args=FLAGS),
])
