"""Drop rehearsal: a realistic drop against the stack, faults on purpose, and the figures.

`make rehearsal` or `python -m benchmarks.rehearsal --help`; see README.md in this folder.
"""
