"""Runs :mod:`petflare.benchmarks.gpu` (options: ``--help``)."""

import sys

from petflare.benchmarks.gpu import main

if __name__ == "__main__":
    sys.exit(main())
