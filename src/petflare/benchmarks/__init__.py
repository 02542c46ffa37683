"""Benchmarks: one module per benchmark, each behind a thin script in ``scripts/``.

They measure the shipped model folders and the classical baselines on phantoms and on the real
FDG-PET in ``../shared/data/real``; their results are the numbers in ``docs/benchmarks.md``.
"""
