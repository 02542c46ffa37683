"""Runs :mod:`petflare.benchmarks.quant` (options: ``--help``)."""

import sys

from petflare.benchmarks.quant import main

if __name__ == "__main__":
    sys.exit(main())
