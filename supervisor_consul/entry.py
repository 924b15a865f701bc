"""The commands' entry point, light on purpose: SIGTERM is held from the first moment.

supervisord calls a listener RUNNING after startsecs (1 s by default), ready or not,
and importing what the listener needs takes about half a second on an idle host.  A
shutdown in that moment would kill it by SIGTERM's default before it could deregister
anything; held, the SIGTERM waits until the listener can act on it (cli.run_listen).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

_held: list[int] = []


def _hold(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


def hold_sigterm() -> None:
    """From now on a SIGTERM is only noted (`sigterm_held`), until a handler of the caller's replaces this."""
    signal.signal(signal.SIGTERM, _hold)


def sigterm_held() -> bool:
    return bool(_held)


def release_sigterm() -> None:
    """SIGTERM's default again, for a command with no use for holding it; one held meanwhile ends us now."""
    if signal.getsignal(signal.SIGTERM) is not _hold:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _held:
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    hold_sigterm()
    from .cli import main as run  # the heavy imports, with SIGTERM held
    sys.exit(run())
