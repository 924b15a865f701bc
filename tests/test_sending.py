"""sending: a round's operations at once, heartbeats most urgent first, and how far behind they are."""
from __future__ import annotations

import threading
import time

from supervisor_consul import sending
from supervisor_consul.agent import ConsulError
from supervisor_consul.health import CRITICAL, PASSING, Health
from supervisor_consul.plan import Actual, UpdateTTL
from tests.test_sync import RUNNING_42, World, service, sid


def op(namespec: str, status: str = PASSING) -> UpdateTTL:
    return UpdateTTL(sid(namespec), f"{sid(namespec)}:process", Health(status, "x"))


def test_a_change_of_status_goes_first_then_the_longest_unwritten():
    actual = {sid(n): Actual(sid(n), "f", frozenset(), PASSING, "x", at)
              for n, at in (("a", 30.0), ("b", 10.0), ("c", 20.0))}
    ops = [op("a"), op("b"), op("c", CRITICAL)]
    ops.sort(key=lambda o: sending.urgency(o, actual[o.service_id]))
    assert [o.service_id for o in ops] == [sid("c"), sid("b"), sid("a")]


def test_many_go_out_at_once_one_in_the_callers_thread():
    threads: set[str] = set()
    lock = threading.Lock()

    def slow(operation):
        with lock:
            threads.add(threading.current_thread().name)
        time.sleep(0.2)

    sender = sending.Sender(slow)
    started = time.monotonic()
    assert sender.send_all([op(f"p{i}") for i in range(8)]) == [None] * 8
    assert time.monotonic() - started < 0.2 * 8 / 2  # at least twice as fast as one after another
    threads.clear()
    sender.send_all([op("p0")])
    assert threads == {threading.current_thread().name}


def test_each_result_is_its_operations():
    refused = ConsulError("refused", status=403)

    def send(operation):
        if operation.service_id == sid("bad"):
            raise refused

    assert sending.Sender(send).send_all([op("good"), op("bad"), op("good2")]) == [None, refused, None]


def test_falling_behind_is_said_once_and_its_end_too(caplog):
    # Without the claim, where each instance's heartbeat is its liveness.
    world = World(*(service(f"p{i}") for i in range(3)), claimed=False)
    for i in range(3):
        world.supervisor.set(f"p{i}", "RUNNING", pid=42)
    world.round()
    caplog.set_level("INFO", logger="supervisor_consul")
    world.monotonic.advance(11)  # 11 s of a 15 s ttl unrefreshed: a beat was missed
    world.sync.converge()
    world.monotonic.advance(11)
    world.sync.converge()
    assert caplog.text.count("heartbeats fall behind: TTL checks went 67% of their ttl unrefreshed") == 1
    world.monotonic.advance(5)  # on time again
    world.sync.converge()
    assert "heartbeats keep up with their TTLs again" in caplog.text
    assert [w for w in world.take_writes() if w[0] == "update_ttl"][-1][2] == RUNNING_42
