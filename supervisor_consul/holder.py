"""Holding this listener's claim on the agent (see claim.py): read it, take it
when it is free, keep its TTL check passing, and say when another live
supervisord holds it.  The sync loop acts only while `may_act()`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from . import acl_token, claim, instance
from .agent import REFUSED_RETRY, Agent, ConsulError
from .config import Configuration
from .health import CRITICAL, PASSING, Health
from .pulse import Pulse

log = logging.getLogger("supervisor_consul")
MAX_TTL = 15.0  # seconds: the claim's TTL check, unless an instance's ttl is shorter
HEARTBEATS_PER_TTL = 3  # looks at the claim (and heartbeats of it) per TTL


def claim_ttl(configuration: Configuration) -> float:
    """The claim's TTL: its instances alias it, so each turns critical within its
    own ttl once supervisord or the listener is gone."""
    return min([MAX_TTL, *(spec.ttl_seconds for spec in configuration.services.values() if spec.ttl_check)])


class Standing(enum.Enum):
    UNKNOWN = "unknown"  # not read yet
    HELD = "held"  # ours
    UNCLAIMED = "unclaimed"  # the agent refuses to register it: act without it (said once)
    YIELDED = "yielded"  # another live supervisord holds it: touch nothing


class Holder:
    def __init__(self, agent: Agent, keeper: claim.Keeper, report: Callable[..., None],
                 clear: Callable[[str, str | None], None], monotonic: Callable[[], float] = time.monotonic,
                 background: bool = True, agent_forgot: Callable[[], None] = lambda: None,
                 metrics_endpoint: tuple[str, int] | None = None) -> None:
        """`agent_forgot`: called when the agent no longer has the claim (it restarted,
        and with it everything else of ours).  `metrics_endpoint`: (address, port) the
        claim carries for Prometheus (instance.of_claim)."""
        self.agent = agent
        self._metrics_endpoint = metrics_endpoint
        self._agent_forgot = agent_forgot
        self.pulse = Pulse(lambda check_id, health: agent.update_ttl(check_id, health, claim.SERVICE),
                           self._forgotten, monotonic, background)
        self.keeper = keeper
        self.standing = Standing.UNKNOWN
        self._report, self._clear = report, clear  # Conditions': a condition is said once
        self._due = 0.0  # monotonic time of the next look
        self.every = MAX_TTL / HEARTBEATS_PER_TTL  # seconds between looks
        self._registration: instance.Registration | None = None
        self._registered = ""  # the fingerprint of the claim we last registered

    @property
    def claimed(self) -> bool:
        return self.standing is Standing.HELD

    def configure(self, owner: str, host: str, configuration: Configuration, deregister_after: str | None) -> None:
        ttl = claim_ttl(configuration)
        self.every = ttl / HEARTBEATS_PER_TTL
        registration = instance.of_claim(owner, host, configuration, self.keeper.me, f"{ttl:g}s", deregister_after,
                                         self._metrics_endpoint)
        if self._registration is None or registration.fingerprint != self._registration.fingerprint:
            self._due = 0.0  # a new definition: look (and register it) at once
        self.owner = owner
        self._registration = registration

    def retry_now(self) -> None:
        self._due = 0.0

    def _forgotten(self) -> None:
        """The claim's heartbeat met a check the agent no longer has: register it again
        at the next look, and have everything read afresh (the instances are gone too)."""
        self._due, self._registered = 0.0, ""
        self._agent_forgot()

    def may_act(self, now: float, instances: int, force: bool = False) -> bool:
        """Look at the claim when due (or `force`d: a reconcile), take it or keep it;
        whether this listener may touch the agent.  A ConsulError (the agent gone)
        is the caller's to handle."""
        if force or now >= self._due:
            self._due = now + self.every
            self._look(now, instances)
        self.pulse.beat_if_due()
        return self.standing in (Standing.HELD, Standing.UNCLAIMED)

    def _look(self, now: float, instances: int) -> None:
        assert self._registration is not None
        try:
            seen = self.agent.read_claim(self.owner)
            decision = self.keeper.decide(seen)
            if decision.verdict is claim.Verdict.YIELD:
                self.pulse.stop()
                self.standing = Standing.YIELDED
                self._report("claim", self._yielding(decision), logging.ERROR)
                return
            health = Health(PASSING, self._note(instances))
            if decision.verdict is claim.Verdict.TAKE or self._registered != self._registration.fingerprint:
                if seen is not None and decision.verdict is claim.Verdict.TAKE:  # not ours re-registered
                    log.info("taking over owner id %s: %s", self.owner, decision.why)
                # Critical first, as new instances are, so the note reaches the catalog at once; a
                # passing claim stays passing, so no alias of it blinks.
                initial = PASSING if seen is not None and seen.status == PASSING else CRITICAL
                self.agent.register(self._registration, health, initial=initial)
                self._registered = self._registration.fingerprint
                self.pulse.keep(self._registration.ttl_check_id or "", health, self.every, written=True)
                again = self.agent.read_claim(self.owner)
                if again is None or again.incarnation != self.keeper.me:
                    # Another listener registered it at the same moment: the next look settles it.
                    self._due = now
                    return
            else:  # beaten by the pulse; at once when the note changed
                self.pulse.keep(self._registration.ttl_check_id or "", health, self.every)
        except ConsulError as exc:
            if exc.unreachable:
                raise
            if exc.lost:  # the agent forgot it (restarted): register it again at the next look
                self._due, self._registered = now, ""
                return
            if exc.token_unknown:  # refuses everything, not the claim: nothing to change but the token
                self._report(acl_token.CONDITION, str(exc), logging.WARNING, once=True)
                return
            self.pulse.stop()
            self.standing = Standing.UNCLAIMED
            self._due = now + REFUSED_RETRY
            self._report("claim", f"{exc}; going on without the claim {instance.claim_id(self.owner)}: another "
                                  f"supervisord with the same identity would go unnoticed, every instance's TTL "
                                  f"check is refreshed every ttl/3 instead of one heartbeat for all, and check = "
                                  f"none instances get no liveness check", logging.WARNING)
            return
        self.standing = Standing.HELD
        self._clear("claim", f"holding the claim {instance.claim_id(self.owner)}")

    def release(self) -> None:
        """supervisord is gone and so are our instances: the claim goes last, since
        an alias of a service that is gone shows passing for up to a minute (1.8)."""
        self.pulse.stop()
        if self.standing is Standing.HELD:
            self.agent.deregister(instance.claim_id(self.owner), claim.SERVICE)
            self.standing = Standing.UNKNOWN

    def _note(self, instances: int) -> str:
        # Changes only with the count: a heartbeat that changes nothing never reaches the servers.
        return f"supervisord pid {self.keeper.me.pid} serves {instances} process(es) in Consul"

    def _yielding(self, decision: claim.Decision) -> str:
        assert self._registration is not None
        meta = dict(self._registration.meta)
        return (f"another supervisord holds owner id {self.owner} (host {meta['supervisord-host']}, "
                f"configuration {meta['supervisord-config']}, identifier {meta['supervisord-identifier']}): "
                f"{decision.why}; touching nothing.  Give one of them its own [supervisord] identifier= "
                f"in {meta['supervisord-config']}")
