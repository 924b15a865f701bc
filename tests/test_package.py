"""The package as a packager gets it (issue 14): the sdist and wheel pass `twine check
--strict`, the wheel carries the sample and the licence, and the sdist alone holds
what its tests need (they run from the unpacked sdist)."""
from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.harness import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO_ROOT)],
                   check=True, capture_output=True, timeout=600)
    return out


def test_twine_check_strict_passes(dist):
    files = sorted(str(p) for p in dist.iterdir())
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_carries_the_sample_and_the_licence(dist):
    wheel = next(dist.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "supervisor_consul/supervisord.conf.sample" in names
    assert any(name.endswith("licenses/LICENSE") for name in names)


def test_the_sdists_own_tests_run(dist, tmp_path):
    with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
        sdist.extractall(tmp_path, filter="data")
    root = next(tmp_path.iterdir())
    for needed in ("LICENSE", "CHANGES.txt", "Makefile", "etc/supervisord.conf.sample", "scripts/get-consul",
                   "tests/conftest.py", "tests/harness.py"):
        assert (root / needed).exists(), needed
    # Its tests import the unpacked package (pytest puts the rootdir first), not this checkout's.
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "--unit", "-m", "not fuzz", "-p", "no:cacheprovider",
                             "tests/test_schema.py", "tests/test_migrate.py", "tests/test_config.py"],
                            cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
