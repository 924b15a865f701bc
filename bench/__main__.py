"""`python -m bench [NAME ...]`: run the benchmarks and print one table.

NAME is any of latency, crash, burst, throughput, footprint, steady, laps (default: all).
--quick runs each with small counts (seconds, not minutes) to check the
scripts themselves; its figures mean little.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time

from bench.report import Row, dump, machine, table, write_doc

ALL = ("latency", "crash", "burst", "throughput", "footprint", "steady", "laps")
# NAME -> (module, function) where that is not (bench.NAME, run)
RUNNERS = {"crash": ("bench.latency", "run_crash")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(ALL))
    parser.add_argument("--quick", action="store_true", help="small counts: check the scripts, not the figures")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--doc", metavar="PATH", help="also write the table into PATH between its markers "
                                                       "(docs/performance.md)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in ALL]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(ALL)}")
    rows: list[Row] = []
    started = time.monotonic()
    for name in args.names or ALL:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        module, function = RUNNERS.get(name, (f"bench.{name}", "run"))
        try:
            rows.extend(getattr(importlib.import_module(module), function)(quick=args.quick))
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not cost the others' figures
            print(f"bench: {name} failed: {exc}", file=sys.stderr, flush=True)
            rows.append(Row(f"{name}: failed", f"{type(exc).__name__}: {exc}"[:300], "-", None, "-", None))
    print()
    print("\n".join(table(rows)))
    print()
    print(f"machine: {machine()}")
    print(f"took {time.monotonic() - started:.0f} s{' (--quick: figures are not meaningful)' if args.quick else ''}")
    if args.json:
        dump(rows, args.json)
    if args.doc:
        command = " ".join(["python -m bench", *args.names])
        write_doc(args.doc, rows, f"one run of `{command}`, {datetime.date.today().isoformat()}")
    return 0  # figures, not a verdict: the table says which targets were met


if __name__ == "__main__":
    sys.exit(main())
