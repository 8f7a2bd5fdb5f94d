#!/usr/bin/env bash
# Runs the tests that compare against PyTorch and the official `adamp` under
# each given torch release, each in a fresh venv, to check that the test
# extra's range (`torch>=2.5,<2.16` in pyproject.toml's `peers` extra) holds at its ends:
#
#   scripts/test_torch_range.sh 2.5.1 2.15.0
#
# Without arguments it runs the range's ends, 2.5.1 and 2.15.0. The peers run live
# (`pytest --extended -m peers`), so each release must also reproduce the recorded fixtures. On a Linux
# x86_64 machine PyPI's torch wheels are CUDA builds (several GB with their
# nvidia-* dependencies); the tests run them on the CPU. Each venv installs
# this checkout editable, which rebuilds the kernel in place.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
versions=("$@")
[[ ${#versions[@]} == 0 ]] && versions=(2.5.1 2.15.0)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

status=0
for version in "${versions[@]}"; do
  echo "== torch $version"
  "$python" -m venv "$work/venv-$version"
  # shellcheck disable=SC1091
  . "$work/venv-$version/bin/activate"
  pip install -q "torch==$version" -e "$root[test,peers]"
  python -c "import importlib.metadata as m, torch; print('torch', torch.__version__, '| adamp', m.version('adamp'))"
  (cd "$root" && python -m pytest -q -p no:cacheprovider --extended -m peers) || status=1
  deactivate
  rm -rf "$work/venv-$version"
done
exit "$status"
