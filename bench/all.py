"""Every benchmark in one command: start-up figures, then the bulk figures.

    python bench/all.py            # full size (a few minutes)
    python bench/all.py --quick    # smaller data and fewer runs, for a smoke check

Each part prints its own table, every figure next to its yardstick measured in the same
run. The targets are for full size: with --quick's small files, start-up dominates the bulk
figures and their PASS/FAIL column means nothing. Not part of the test run; exits 0.
"""

from __future__ import annotations

import sys

import bulk
import startup


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    startup.main(["--runs", "5"] if quick else [])
    print()
    bulk.main(["--runs", "1", "--rows-import", "10000", "--rows-export", "100000"] if quick else [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
