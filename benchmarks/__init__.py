"""`make bench`: cgc-rerun against the official SDK on the built-in simulator.

`benchmarks.run` is the entry point; each contender runs in its own process
(`benchmarks.contenders`) so that its CPU time and peak memory are its own.
"""

from __future__ import annotations
