"""Evaluation: validation likelihoods (`likelihood.py`) and `python -m dlmjax.eval RUN_DIR`."""
