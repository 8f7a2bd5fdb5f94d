#!/usr/bin/env bash
# Runs the fused kernel's tests against an AddressSanitizer + UBSan build of
# csrc/radial_first_pass.cc.
#
#   . .venv/bin/activate && scripts/sanitize_kernel.sh [extra pytest args]
#
# Needs g++ with libasan/libubsan and the project's venv (jax, pytest). Not
# part of CI: it takes a few minutes on 2 cores. The package's own .so is left
# alone: the sanitized build goes into a copy of decoupled_optax/ in a
# temporary directory that PYTHONPATH puts first, and a pytest plugin checks,
# in the test process itself, that the sanitized build is what gets imported.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The suffix and headers of the interpreter that runs the tests, which a
# python3-config on PATH (pyenv shims, the system's) need not be.
suffix="$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
include="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"

cp -r "$root/decoupled_optax" "$work/"
rm -f "$work"/decoupled_optax/_cpu_kernels*.so
find "$work" -name __pycache__ -prune -exec rm -rf {} +
kernel="$work/decoupled_optax/_cpu_kernels$suffix"

# setup.py's flags, with the sanitizers instead of -O3.
echo "building $kernel"
g++ -std=c++17 -fvisibility=hidden -fno-math-errno -isystem "$root/csrc/third_party" \
  -I"$include" -fPIC -shared \
  -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1 \
  "$root/csrc/radial_first_pass.cc" -o "$kernel"

cat >"$work/sanitized_kernel_check.py" <<EOF
def pytest_sessionstart(session):
  import decoupled_optax._cpu_kernels as kernels

  print("decoupled_optax._cpu_kernels:", kernels.__file__)
  assert kernels.__file__ == "$kernel", "the tests would not run the sanitized kernel"
EOF

# libasan must come first (the interpreter is not instrumented), and jax's
# own libraries abort at import unless libstdc++ is loaded with it. Python
# leaks by design: no leak check.
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"

# Not from the checkout: python -c and -m put the working directory, with the
# package's own .so, ahead of PYTHONPATH.
cd "$work"
"$python" -c 'import decoupled_optax._cpu_kernels as k; print("python -c imports", k.__file__)'
# ASan's redzones and quarantine inflate RSS: the memory test does not apply.
"$python" -m pytest "$root/tests/test_fused_fuzz.py" "$root/tests/test_fused.py" \
  --rootdir "$root" -c "$root/pyproject.toml" -q -p no:cacheprovider \
  -p sanitized_kernel_check -s -k "not costs_no_more_memory" "$@"
