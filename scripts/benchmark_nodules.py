"""Runs :mod:`petflare.benchmarks.nodules` (options: ``--help``)."""

import sys

from petflare.benchmarks.nodules import main

if __name__ == "__main__":
    sys.exit(main())
