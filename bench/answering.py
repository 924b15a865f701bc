"""The plainest event listener, for the crash-loop benchmark (bench/laps.py):
supervisor.childutils, answering every event OK after DELAY seconds.

    python bench/answering.py DELAY
"""
from __future__ import annotations

import sys
import time

from supervisor import childutils


def main(delay: float) -> None:
    while True:
        childutils.listener.wait(sys.stdin, sys.stdout)
        if delay:
            time.sleep(delay)  # the late answer is what the benchmark measures
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main(float(sys.argv[1]))
