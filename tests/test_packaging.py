"""The install the README gives is one that type checkers can read."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

# Builds the sdist and the wheel (the C++ kernel too): part of the extended run.
pytestmark = pytest.mark.extended


def test_the_editable_install_is_a_path_entry_that_type_checkers_follow():
  """setuptools' import-hook editable mode hides the package from pyright and mypy."""
  site_packages = Path(sysconfig.get_paths()["purelib"])
  records = list(site_packages.glob("decoupled_optax-*.dist-info/direct_url.json"))
  editable = any(json.loads(r.read_text()).get("dir_info", {}).get("editable") for r in records)
  if not editable:
    pytest.skip("decoupled_optax is not installed in editable mode here")
  lines = [
    line.strip()
    for pth in site_packages.glob("__editable__*decoupled_optax*.pth")
    for line in pth.read_text().splitlines()
    if line.strip()
  ]
  assert lines, "no .pth file of the editable install"
  assert not any(line.startswith("import ") for line in lines), lines
  assert any((Path(line) / "decoupled_optax" / "py.typed").is_file() for line in lines), lines


# ---------------------------------------------------------------- the release

ROOT = Path(__file__).resolve().parents[1]

# What the sdist's own test suite needs besides the package (issue #12).
SDIST_MUST_HOLD = (
  "LICENSE",
  "CHANGELOG.md",
  "README.md",
  ".gitignore",  # tests/test_examples.py checks that outputs/ is ignored
  "pyproject.toml",
  "setup.py",
  "csrc/radial_first_pass.cc",
  "tests/conftest.py",
  "tests/_reference.py",
  "tests/_peers.py",
  "tests/_peer_runs.py",
  "tests/fixtures/peers.npz",
  "tests/multi_device/conftest.py",
  "tests/multi_device/_sharded_model.py",
  "examples/_digits.py",
  "benchmarks/_common.py",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """``python -m build``: the sdist, and the wheel built from the unpacked sdist.

  It builds a copy of the tree: setuptools writes its egg-info into the tree it builds, and two
  pytest-xdist workers building the same tree would race on it.
  """
  out = tmp_path_factory.mktemp("dist")
  source = tmp_path_factory.mktemp("source") / "tree"
  shutil.copytree(
    ROOT,
    source,
    ignore=shutil.ignore_patterns(
      ".git", ".venv", "build", "outputs", "_build", "*.egg-info", "*.so"
    ),
  )
  result = subprocess.run(
    [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
  (sdist,) = out.glob("*.tar.gz")
  (wheel,) = out.glob("*.whl")
  return sdist, wheel


def _tracked(prefix: str) -> set[str]:
  result = subprocess.run(
    ["git", "ls-files", prefix], cwd=ROOT, capture_output=True, text=True, check=False
  )
  if result.returncode != 0:
    return set()  # an unpacked sdist is no git checkout: SDIST_MUST_HOLD still applies
  return {line for line in result.stdout.splitlines() if line}


def test_the_sdist_holds_what_its_tests_need(built):
  sdist, _ = built
  with tarfile.open(sdist) as tar:
    top = tar.getnames()[0].split("/")[0]
    names = {name.removeprefix(top + "/") for name in tar.getnames()}
  missing = [name for name in SDIST_MUST_HOLD if name not in names]
  for prefix in ("tests", "examples", "benchmarks", "docs", "decoupled_optax"):
    missing += sorted(_tracked(prefix) - names)
  assert not missing, f"not in the sdist: {missing}"
  assert not any(name.endswith(".so") for name in names)


def test_the_wheel_is_abi3_with_a_stripped_kernel_that_loads(built, tmp_path):
  _, wheel = built
  assert wheel.name.endswith("-cp310-abi3-linux_x86_64.whl"), wheel.name
  with zipfile.ZipFile(wheel) as archive:
    archive.extractall(tmp_path)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith("/METADATA")))
  (kernel,) = (tmp_path / "decoupled_optax").glob("_cpu_kernels*.so")
  assert kernel.name == "_cpu_kernels.abi3.so"
  # A stripped ELF has no .symtab section (its name is in the section-name table otherwise).
  assert b".symtab\0" not in kernel.read_bytes(), "the kernel is not stripped"
  assert kernel.stat().st_size < 600_000, kernel.stat().st_size
  assert b"License-Expression: Apache-2.0" in metadata
  # The unpacked wheel comes before the editable install on the path.
  check = (
    "import sys, decoupled_optax as d, jax, jax.numpy as jnp;"
    "assert d.__file__.startswith(sys.argv[1]), d.__file__;"
    "assert d.cpu_kernel_available();"
    "tx = d.adamp(1e-3, 1e-5, cpu_kernel=True, weight_decay_convention='paper');"
    "p = {'w': jnp.ones((3, 4)), 'b': jnp.zeros(4)};"
    "u, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, p), tx.init(p), p);"
    "print(d.__version__)"
  )
  env = {**os.environ, "PYTHONPATH": str(tmp_path)}
  result = subprocess.run(
    [sys.executable, "-c", check, str(tmp_path)],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  version = re.search(rb"^Version: (\S+)$", metadata, re.M)
  assert version is not None
  assert result.stdout.strip() == version.group(1).decode()


def test_the_version_has_one_source():
  text = (ROOT / "pyproject.toml").read_text()
  assert 'dynamic = ["version"]' in text
  assert not re.search(r"^version\s*=\s*\"", text, re.M), "a second version in pyproject.toml"
  init = (ROOT / "decoupled_optax" / "__init__.py").read_text()
  assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', init, re.M)
