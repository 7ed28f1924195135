"""The optional C accelerator for the NumPy backend (everything else is in pyproject.toml).

``backprop_gpu._cpu`` is built when a C compiler is present; when it is not, or the build
fails, the package installs without it and runs its plain NumPy code (``optional=True``).
"""

import sys

import numpy
from setuptools import Extension, setup

# no FMA contraction: the fused loops must round exactly as the NumPy reference does;
# no trapping math, no errno: lets the compiler vectorise the ReLU mask and inline sqrt (no
# FP exceptions or errno are read)
FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-trapping-math",
                                            "-fno-math-errno"]  # fmt: skip

setup(
    ext_modules=[
        Extension(
            "backprop_gpu._cpu",
            ["backprop_gpu/_cpu.c"],
            include_dirs=[numpy.get_include()],
            extra_compile_args=FLAGS,
            optional=True,
        )
    ]
)
