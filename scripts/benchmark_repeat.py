"""Runs :mod:`petflare.benchmarks.repeat` (options: ``--help``)."""

import sys

from petflare.benchmarks.repeat import main

if __name__ == "__main__":
    sys.exit(main())
