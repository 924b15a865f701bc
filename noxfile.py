"""The compatibility runs (`make compat`): the pure tests on every Python the
package supports, and once with the oldest versions of its dependencies that
install_requires admits."""
from __future__ import annotations

import glob
import os
import subprocess

import nox

nox.options.error_on_missing_interpreters = True  # a Python that is missing is a failed run, not a skipped one
nox.options.reuse_existing_virtualenvs = True



def interpreter(version: str) -> str:
    """pythonX.Y on PATH if it runs (a pyenv shim may not), else pyenv's own build of it;
    else the bare version, which nox then reports missing."""
    try:
        subprocess.run([f"python{version}", "--version"], check=True, capture_output=True)
        return f"python{version}"
    except (OSError, subprocess.CalledProcessError):
        pass
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")))
    return found[-1] if found else version


VERSIONS = ("3.11", "3.12", "3.13")
# The lower bounds of setup.cfg's install_requires, for Python 3.11 (3.12+ needs supervisor 4.3).
OLDEST = ["supervisor==4.2.5", "py-consul==1.8.0", "requests==2.32.0", "urllib3==2.0.0", "setuptools<82"]


def _unit(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "--unit", "-m", "not fuzz", "-p", "no:cacheprovider", *session.posargs)


for _version in VERSIONS:  # unit-3.11, unit-3.12, unit-3.13
    # A function of its own each: nox keeps a session's settings on its function.
    nox.session(name=f"unit-{_version}", python=interpreter(_version))(lambda session: _unit(session))


@nox.session(python=interpreter("3.11"))
def oldest(session: nox.Session) -> None:
    session.install("-e", ".[test]", *OLDEST)
    session.run("python", "-m", "pytest", "-q", "--unit", "-m", "not fuzz", "-p", "no:cacheprovider", *session.posargs)
