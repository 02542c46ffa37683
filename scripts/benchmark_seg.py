"""Runs :mod:`petflare.benchmarks.seg` (options: ``--help``)."""

import sys

from petflare.benchmarks.seg import main

if __name__ == "__main__":
    sys.exit(main())
