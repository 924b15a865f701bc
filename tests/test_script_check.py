"""script_check: a script check's result by Consul's exit-status convention, and
the runner: real commands, every interval, timeouts, the output limit, the
concurrency limit, dropped scripts and close()."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor_consul.health import CRITICAL, PASSING, WARNING, Health
from supervisor_consul.script_check import CUT_MARKER, OUTPUT_LIMIT, Script, Scripts, result_of

# --- result_of: pure --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("returncode, status", [(0, PASSING), (1, WARNING), (2, CRITICAL), (127, CRITICAL),
                                                (255, CRITICAL)])
def test_the_exit_status_decides_as_in_consul_and_nagios(returncode, status):
    assert result_of(returncode, b"disk 80% full\n", False, 5) == Health(status, "disk 80% full")


def test_no_output_says_the_exit_status():
    assert result_of(0, b"", False, 5) == Health(PASSING, "exit status 0")
    assert result_of(3, b" \n\t", False, 5) == Health(CRITICAL, "exit status 3")


def test_killed_by_a_signal_is_critical_and_names_it():
    assert result_of(-15, b"", False, 5) == Health(CRITICAL, "killed by signal SIGTERM")
    assert result_of(-9, b"half a line", False, 5) == Health(CRITICAL, "killed by signal SIGKILL: half a line")


def test_a_signal_without_a_name_is_given_by_number():
    assert result_of(-99, b"", False, 5) == Health(CRITICAL, "killed by signal 99")


def test_timed_out_is_critical_whatever_the_status_and_says_what_it_printed():
    assert result_of(-9, b"", True, 5) == Health(CRITICAL, "timed out after 5s")
    assert result_of(0, b"checking...\n", True, 0.5) == Health(CRITICAL, "timed out after 0.5s: checking...")
    assert result_of(None, b"", True, 30.0) == Health(CRITICAL, "timed out after 30s")


def test_could_not_start_is_critical_with_the_error():
    health = result_of(None, b"", False, 5, error="No such file or directory: /x")
    assert health == Health(CRITICAL, "No such file or directory: /x")


def test_an_undecodable_file_name_in_the_error_is_replaced():
    health = result_of(None, b"", False, 5, error="No such file or directory: /\udcff")
    assert health == Health(CRITICAL, "No such file or directory: /?")


def test_a_run_that_started_and_did_not_time_out_needs_its_returncode():
    with pytest.raises(ValueError):
        result_of(None, b"", False, 5)


def test_output_is_decoded_with_bad_bytes_replaced_and_stripped():
    assert result_of(0, b"\n  ok \xff\xfe done \r\n", False, 5).note == "ok \ufffd\ufffd done"


def test_output_at_the_limit_is_kept_whole():
    output = b"x" * OUTPUT_LIMIT
    assert result_of(0, output, False, 5).note == output.decode()


def test_output_over_the_limit_is_cut_with_a_marker_and_fits_the_limit():
    note = result_of(0, b"x" * 1_000_000, False, 5).note
    assert note.endswith(CUT_MARKER) and note.startswith("x" * 100)
    assert len(note.encode()) <= OUTPUT_LIMIT


def test_a_character_split_by_the_cut_is_dropped_not_replaced():
    note = result_of(0, "é".encode() * OUTPUT_LIMIT, False, 5).note
    assert "\ufffd" not in note and note.endswith(CUT_MARKER)
    assert len(note.encode()) <= OUTPUT_LIMIT


def test_a_timed_out_note_with_long_output_still_fits_the_limit():
    note = result_of(-9, b"y" * (OUTPUT_LIMIT + 1), True, 5).note
    assert note.startswith("timed out after 5s: yyy") and note.endswith(CUT_MARKER)
    assert len(note.encode()) <= OUTPUT_LIMIT


def test_output_that_fits_but_replacement_characters_make_too_long_is_cut():
    note = result_of(0, b"\xff" * OUTPUT_LIMIT, False, 5).note  # each bad byte becomes three
    assert note.endswith(CUT_MARKER) and len(note.encode()) <= OUTPUT_LIMIT


@pytest.mark.parametrize("fields", [{"command": ()}, {"interval": 0}, {"timeout": -1}, {"interval": float("nan")}])
def test_a_script_that_could_never_run_sensibly_is_refused(fields):
    with pytest.raises(ValueError):
        Script(**{"check_id": "c", "command": ("true",), "interval": 1, "timeout": 1, **fields})


# --- Scripts: real commands -------------------------------------------------------------------------------------------


class Reports:
    """The report callback: every (time, check_id, health), and waiting for them with a deadline."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.got: list[tuple[float, str, Health]] = []

    def __call__(self, check_id: str, health: Health) -> None:
        with self.cond:
            self.got.append((time.monotonic(), check_id, health))
            self.cond.notify_all()

    def of(self, check_id: str) -> list[Health]:
        with self.cond:
            return [health for _, cid, health in self.got if cid == check_id]

    def times(self, check_id: str) -> list[float]:
        with self.cond:
            return [at for at, cid, _ in self.got if cid == check_id]

    def wait_for(self, check_id: str, count: int = 1, timeout: float = 10.0) -> list[Health]:
        """The first `count` reports for check_id, once there are that many."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.of(check_id)) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{check_id}: {len(self.of(check_id))} reports of {count} in {timeout} s"
                self.cond.wait(left)
            return self.of(check_id)[:count]


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """No such process, not even a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def not_running(pid: int) -> bool:
    """Gone, or a zombie another process (our child's orphan's new parent) has still to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def sh(check_id: str, script: str, interval: float = 60.0, timeout: float = 10.0, **fields) -> Script:
    return Script(check_id, ("sh", "-c", script), interval, timeout, **fields)


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def runner(reports) -> Iterator[Callable[..., Scripts]]:
    """runner(**options) -> a Scripts reporting into `reports`, closed at teardown."""
    made: list[Scripts] = []

    def make(**options) -> Scripts:
        made.append(Scripts(reports, **options))
        return made[-1]

    yield make
    for scripts in made:
        scripts.close()


def test_exit_0_1_2_are_passing_warning_critical_with_the_output(runner, reports):
    scripts = runner()
    scripts.want([sh("ok", "echo fine; exit 0"), sh("warn", "echo meh >&2; exit 1"), sh("crit", "echo bad; exit 2")])
    assert reports.wait_for("ok") == [Health(PASSING, "fine")]
    assert reports.wait_for("warn") == [Health(WARNING, "meh")]  # stderr goes with stdout
    assert reports.wait_for("crit") == [Health(CRITICAL, "bad")]


def test_the_command_runs_without_a_shell(runner, reports):
    runner().want([Script("echo", ("echo", "$HOME", "a;b"), 60, 10)])
    assert reports.wait_for("echo") == [Health(PASSING, "$HOME a;b")]


def test_killed_by_a_signal(runner, reports):
    runner().want([sh("sig", "kill -TERM $$")])
    assert reports.wait_for("sig") == [Health(CRITICAL, "killed by signal SIGTERM")]


def test_a_command_that_cannot_start_is_critical_and_tried_again(runner, reports):
    runner().want([Script("missing", ("/nonexistent/check",), 0.05, 10)])
    assert reports.wait_for("missing", 2) == [Health(CRITICAL, "No such file or directory: /nonexistent/check")] * 2


def test_a_missing_directory_is_critical(runner, reports):
    runner().want([sh("dir", "true", directory="/nonexistent-dir")])
    assert reports.wait_for("dir") == [Health(CRITICAL, "No such file or directory: /nonexistent-dir")]


def test_the_programs_environment_and_directory(runner, reports, tmp_path):
    path = os.environ["PATH"]  # the listener's environment is kept beside the added variable
    runner().want([sh("env", 'echo "$GREETING $PATH"; pwd', environment=(("GREETING", "hello"),),
                      directory=str(tmp_path))])
    assert reports.wait_for("env") == [Health(PASSING, f"hello {path}\n{tmp_path}")]


def test_it_runs_again_every_interval_from_the_end_of_the_last_run(runner, reports):
    runner().want([sh("slow", "sleep 0.1; echo done", interval=0.2)])
    reports.wait_for("slow", 3)
    starts_apart = [b - a for a, b in zip(reports.times("slow"), reports.times("slow")[1:])]
    assert all(gap >= 0.2 + 0.1 - 0.02 for gap in starts_apart), starts_apart  # interval plus the run itself


def test_a_timeout_is_critical_on_time_and_kills_the_command(runner, reports):
    started = time.monotonic()
    runner().want([sh("hang", "echo $$; exec sleep 30", timeout=0.5)])
    [health] = reports.wait_for("hang")
    assert 0.5 <= time.monotonic() - started < 0.5 + 1.0
    assert health.status == CRITICAL and health.note.startswith("timed out after 0.5s: ")
    assert gone(int(health.note.rsplit(" ", 1)[1]))  # killed and reaped before the report


def test_a_timeout_kills_the_whole_process_group(runner, reports):
    # The shell exits at once, but the background sleep holds its output open:
    # the run lasts until the timeout, which kills the sleep too.
    runner().want([sh("bg", "sleep 30 & echo $!", timeout=0.5)])
    [health] = reports.wait_for("bg")
    assert health.status == CRITICAL and health.note.startswith("timed out after 0.5s: ")
    orphan = int(health.note.rsplit(" ", 1)[1])
    eventually(lambda: not_running(orphan))


def test_a_command_that_closes_its_output_is_still_timed_out(runner, reports):
    runner().want([sh("quiet", "exec >&- 2>&-; sleep 30", timeout=0.5)])
    assert reports.wait_for("quiet") == [Health(CRITICAL, "timed out after 0.5s")]


@pytest.mark.parametrize("status, exit_code", [(PASSING, 0), (WARNING, 1)])
def test_a_megabyte_of_output_is_cut_at_the_limit_and_does_not_block(runner, reports, status, exit_code):
    print_1mb = f"import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush(); sys.exit({exit_code})"
    runner().want([Script("chatty", (sys.executable, "-c", print_1mb), 60, 10)])
    [health] = reports.wait_for("chatty")
    assert health.status == status
    assert health.note.startswith("x" * 1000) and health.note.endswith(CUT_MARKER)
    assert len(health.note.encode()) <= OUTPUT_LIMIT


def test_a_removed_script_is_not_reported_again(runner, reports):
    scripts = runner()
    scripts.want([sh("a", "echo a", interval=0.05), sh("b", "echo b", interval=0.05)])
    reports.wait_for("a")
    scripts.want([sh("b", "echo b", interval=0.05)])
    reports_of_a = len(reports.of("a"))
    reports.wait_for("b", len(reports.of("b")) + 5)  # b is the clock: several intervals go by
    assert len(reports.of("a")) == reports_of_a


def test_a_script_removed_while_running_is_killed_and_not_reported(runner, reports, tmp_path):
    pidfile = tmp_path / "pid"
    scripts = runner()
    clock = sh("b", "echo b", interval=0.05)
    scripts.want([sh("a", f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 30"), clock])
    eventually(pidfile.exists)
    pid = int(pidfile.read_text())
    scripts.want([clock])
    eventually(lambda: gone(pid))
    reports.wait_for("b", len(reports.of("b")) + 3)
    assert reports.of("a") == []


def test_a_changed_script_runs_at_once_and_an_unchanged_one_does_not(runner, reports):
    scripts = runner()
    clock = sh("clock", "true", interval=0.05)
    scripts.want([sh("c", "echo one"), clock])
    assert reports.wait_for("c") == [Health(PASSING, "one")]
    scripts.want([sh("c", "echo one"), clock])  # the same again: its interval (60 s) still holds
    reports.wait_for("clock", len(reports.of("clock")) + 3)
    assert len(reports.of("c")) == 1
    scripts.want([sh("c", "echo two"), clock])
    assert reports.wait_for("c", 2, timeout=2.0)[1] == Health(PASSING, "two")


def test_a_script_changed_while_running_reports_only_its_new_run(runner, reports):
    scripts = runner()
    scripts.want([sh("c", "sleep 30; echo old", timeout=60)])
    scripts.want([sh("c", "echo new")])
    assert reports.wait_for("c", timeout=2.0) == [Health(PASSING, "new")]


def test_two_scripts_for_one_check_are_refused(runner):
    with pytest.raises(ValueError):
        runner().want([sh("c", "echo one"), sh("c", "echo two")])


def test_no_more_than_max_running_at_once(runner, reports, tmp_path):
    log = tmp_path / "log"
    scripts = runner(max_running=2)
    started = time.monotonic()
    # Each marks its start and end in one shared file (appends of one line are atomic).
    scripts.want([sh(f"s{i}", f"echo + >> {log}; sleep 0.5; echo - >> {log}") for i in range(6)])
    for i in range(6):
        reports.wait_for(f"s{i}")
    running, most = 0, 0
    for mark in log.read_text().split():
        running += 1 if mark == "+" else -1
        most = max(most, running)
    assert most == 2
    assert time.monotonic() - started >= 3 * 0.5  # three rounds of two


def test_close_kills_a_long_sleeper_and_reaps_it(runner, reports, tmp_path):
    pidfile = tmp_path / "pid"
    scripts = runner()
    scripts.want([sh("sleeper", f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 30",
                     timeout=60)])
    eventually(pidfile.exists)
    pid = int(pidfile.read_text())
    started = time.monotonic()
    scripts.close()
    assert time.monotonic() - started < 2.0
    assert gone(pid)  # killed and reaped: not even a zombie
    assert reports.of("sleeper") == []
    assert not [t for t in threading.enumerate() if t.name.startswith("script-check")]
    scripts.want([sh("late", "echo late")])  # after close: nothing runs
    assert not [t for t in threading.enumerate() if t.name.startswith("script-check")]
