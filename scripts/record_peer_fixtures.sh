#!/usr/bin/env bash
# Records tests/fixtures/peers.npz: runs the test suite with the peers live (torch, the official
# adamp, timm's SGDP fix, the authors' sgd.lua; see tests/_peer_runs.py) and keeps what each
# returned. The default test run compares against these fixtures and needs no torch; `--extended`
# runs the peers live again and fails where they no longer reproduce their fixture.
#
#   pip install 'torch>=2.5,<2.16' --index-url https://download.pytorch.org/whl/cpu
#   pip install -e '.[test,peers]' && scripts/record_peer_fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
unset DECOUPLED_OPTAX_PEER_FIXTURES  # a partial recording's file; this script records them all
rm -f tests/fixtures/peers.npz
python -m pytest -q -p no:cacheprovider --record-peers -m peers -n 0 "$@"
python -c "import importlib.metadata as m; print('recorded with torch', m.version('torch'), '| adamp', m.version('adamp'))"
ls -l tests/fixtures/peers.npz
