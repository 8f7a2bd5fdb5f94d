"""Builds the optional CPU kernel; everything else is in pyproject.toml.

The kernel needs a C++17 compiler and the Python headers. Without them the
build of the extension fails quietly (``optional=True``) and AdamP/SGDP run
the pure-JAX path on every platform.

The kernel uses only CPython's limited API (3.10+), so one ``cp310-abi3``
wheel serves every supported CPython. It is linked with ``-s`` (stripped):
``DECOUPLED_OPTAX_KEEP_SYMBOLS=1`` keeps the symbols for debugging.
"""

import os

from setuptools import Extension, setup

# Py_LIMITED_API = 3.10, the oldest CPython that pyproject.toml supports.
LIMITED_API = "0x030A0000"

setup(
  ext_modules=[
    Extension(
      "decoupled_optax._cpu_kernels",
      sources=["csrc/radial_first_pass.cc"],
      language="c++",
      py_limited_api=True,
      define_macros=[("Py_LIMITED_API", LIMITED_API)],
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
      extra_link_args=[] if os.environ.get("DECOUPLED_OPTAX_KEEP_SYMBOLS") == "1" else ["-s"],
      optional=True,
    )
  ],
  options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
