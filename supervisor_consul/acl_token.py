"""The ACL token the agent is sent, and where it came from.

A token given in a file (`--token-file`, `CONSUL_HTTP_TOKEN_FILE`) is the
one Vault agent, consul-template and the like rotate in place, so the file
is read again when it changes on disk, on SIGHUP, and when the agent says it
knows the token no more ("ACL not found").  The token itself is never
logged: messages name where it came from, and when it was read.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable

log = logging.getLogger("supervisor_consul")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # what an HTTP header carries as is
CONDITION = "token"  # the log's condition for a token the agent does not know: one cause of every refusal


class TokenError(ValueError):
    """A token file that cannot be used; the message names the file, never the token."""


def read_file(path: str, option: str) -> str:
    """The token in a file; `option` names how the user gave the file (for messages)."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise TokenError(f"{option}: cannot read the Consul token file {path}: {reason}") from exc
    if not token:
        # An empty token means the anonymous token: every write refused, far from the cause.
        raise TokenError(f"{option}: the Consul token file {path} is empty; put the token's SecretID in it")
    check(token, f"{option} {path}")
    return token


def check(token: str, source: str) -> None:
    if not _HEADER_SAFE.fullmatch(token):
        # It would fail in the HTTP header with an error that quotes it; never echo it.
        raise TokenError(f"the Consul token from {source} holds whitespace or non-ASCII characters; "
                         f"give the token's SecretID alone")


def _signature(path: str) -> tuple[int, int, int, int] | None:
    """What changes when a file is rewritten in place or replaced by a rename."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Token:
    """The current token.  `value` is read by every request, possibly from
    several threads; `reload` swaps it whole, under a lock."""

    def __init__(self, value: str | None, source: str, path: str | None = None, option: str = "",
                 wall: Callable[[], float] = time.time) -> None:
        self.value = value
        self.source = source  # "--token-file PATH", "CONSUL_HTTP_TOKEN", ...; "" when none was given
        self.path = path  # the file it was read from, if any
        self._option = option
        self._wall = wall
        self._signature = _signature(path) if path else None
        self._previous: str | None = None
        self._reread_at: float | None = None  # when a re-read last changed it
        self._problem = ""  # the last unreadable-file message, said once
        self._lock = threading.Lock()

    @property
    def secrets(self) -> tuple[str, ...]:
        """What to redact from any text: the token in use and the one before it."""
        return tuple(t for t in (self.value, self._previous) if t)

    def described(self) -> str:
        """Where the token came from, for messages: never the token itself."""
        if self._reread_at is None:
            return self.source
        when = time.strftime("%H:%M:%S", time.localtime(self._reread_at))
        return f"{self.source} (as re-read at {when})"

    def reload(self, force: bool = False) -> bool:
        """Read the file again if it changed on disk (always, with `force`);
        True when that gave a new token.  A file caught half-written or gone
        keeps the token read before, and is said once."""
        if self.path is None:
            return False
        with self._lock:
            signature = _signature(self.path)
            if not force and signature == self._signature:
                return False
            try:
                value = read_file(self.path, self._option)
            except TokenError as exc:
                if str(exc) != self._problem:
                    self._problem = str(exc)
                    log.warning("%s; keeping the token read before", exc)
                return False
            if self._problem:
                self._problem = ""
                log.info("the Consul token file %s reads again", self.path)
            self._signature = signature
            if value == self.value:
                return False
            self._previous, self.value = self.value, value
            self._reread_at = self._wall()
            log.info("the Consul token in %s changed; using the new one from now on", self.source)
            return True
