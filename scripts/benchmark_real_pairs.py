"""Runs :mod:`petflare.benchmarks.real_pairs` (options: ``--help``)."""

import sys

from petflare.benchmarks.real_pairs import main

if __name__ == "__main__":
    sys.exit(main())
