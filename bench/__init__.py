"""`python -m bench`: the reproducible benchmark harness (see bench/__main__.py)."""
