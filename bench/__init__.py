"""Benchmarks (issue 4): scripts that print figures beside a baseline measured
in the same run, never timed assertions.  `make bench` runs them all."""
