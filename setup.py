"""Builds the optional CPU kernel; everything else is in pyproject.toml.

The kernel needs a C++17 compiler and the Python headers. Without them the
build of the extension fails quietly (``optional=True``) and AdamP/SGDP run
the pure-JAX path on every platform.
"""

from setuptools import Extension, setup

setup(
  ext_modules=[
    Extension(
      "decoupled_optax._cpu_kernels",
      sources=["csrc/radial_first_pass.cc"],
      language="c++",
      # -fno-math-errno lets sqrt vectorize; the vendored XLA FFI headers are
      # system headers, so their warnings stay out of the build log.
      extra_compile_args=[
        "-std=c++17",
        "-O3",
        "-fno-math-errno",
        "-fvisibility=hidden",
        "-isystem",
        "csrc/third_party",
      ],
      optional=True,
    )
  ]
)
