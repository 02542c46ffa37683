"""Runs :mod:`petflare.benchmarks.pattern` (options: ``--help``)."""

import sys

from petflare.benchmarks.pattern import main

if __name__ == "__main__":
    sys.exit(main())
