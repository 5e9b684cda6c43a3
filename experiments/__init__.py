"""The study: named grids of model size x unique tokens x epochs, run and reported.

`python -m experiments.grid {list, show, run, status, report}` builds on the train command
(`python -m dlmjax.train`) and its run directories (result.json); see docs/architecture.md.
"""
