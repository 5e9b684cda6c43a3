"""The transformer (`transformer.py`) and the attention backends it dispatches to (`attention.py`)."""
