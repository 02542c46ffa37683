"""Runs :mod:`petflare.benchmarks.real` (options: ``--help``)."""

import sys

from petflare.benchmarks.real import main

if __name__ == "__main__":
    sys.exit(main())
