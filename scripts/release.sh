#!/usr/bin/env bash
# Builds the release and checks it, on this machine:
#
#   . .venv/bin/activate && pip install -e ".[release]" && scripts/release.sh [--quick]
#
# 1. `python -m build`: the sdist, and the wheel built from it (the kernel
#    stripped, CPython's limited API: one cp310-abi3 wheel).
# 2. `auditwheel repair`: the wheel gets the manylinux tag this machine's
#    glibc and libstdc++ allow (manylinux_2_34 on Debian 12 with g++ 12; why,
#    in docs/installation.md). For an older tag, run this script inside a
#    manylinux image (quay.io/pypa/manylinux_2_28_x86_64: its toolchain links
#    older symbols).
# 3. A fresh venv installs the repaired wheel (dependencies from the index)
#    and runs `adamp` with the fused kernel, outside the source tree.
# 4. The sdist, unpacked elsewhere, is installed editable into that venv with
#    its test extra and runs its own default tests (against the peers' recorded
#    fixtures, which it holds; no torch): all of them, or with --quick a few
#    files (seconds instead of about five minutes).
#
# Artifacts land in dist/ (ignored): the sdist and the repaired wheel.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$root"

echo "== build"
rm -rf "$work/build" && "$python" -m build --outdir "$work/build" .
sdist="$(ls "$work"/build/*.tar.gz)"
raw_wheel="$(ls "$work"/build/*.whl)"

echo "== repair"
"$python" -m auditwheel repair --wheel-dir "$work/repaired" "$raw_wheel"
wheel="$(ls "$work"/repaired/*.whl)"
"$python" -m auditwheel show "$wheel"
case "$(basename "$wheel")" in
  *-cp310-abi3-manylinux_*_x86_64.whl | *-cp310-abi3-manylinux*.manylinux*_x86_64.whl) ;;
  *) echo "unexpected wheel name: $(basename "$wheel")" >&2; exit 1 ;;
esac

echo "== install the wheel into a fresh venv"
"$python" -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
pip install -q "$wheel"
(cd "$work" && python - <<'PY'
import jax, jax.numpy as jnp, optax
import decoupled_optax as dopt

assert "site-packages" in dopt.__file__, dopt.__file__
assert dopt.cpu_kernel_available(), "the wheel's kernel did not load"
tx = dopt.adamp(1e-3, 1e-5, cpu_kernel=True, weight_decay_convention="paper")
params = {"w": jnp.ones((3, 3, 4, 8)), "b": jnp.zeros(8)}
grads = jax.tree.map(jnp.ones_like, params)
updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
params = optax.apply_updates(params, updates)
print("decoupled_optax", dopt.__version__, "from", dopt.__file__, "kernel: yes")
PY
)

echo "== the sdist's own tests"
mkdir "$work/sdist" && tar -xzf "$sdist" -C "$work/sdist"
src="$(ls -d "$work"/sdist/decoupled_optax-*)"
pip install -q -e "$src[test]"
cd "$src"
if [[ "$quick" == 1 ]]; then
  python -m pytest -q -p no:cacheprovider tests/test_schedules.py tests/test_weight_decay.py
else
  python -m pytest -q -p no:cacheprovider
fi
deactivate

mkdir -p "$root/dist"
cp "$sdist" "$wheel" "$root/dist/"
echo "== done: $(ls "$root"/dist)"
