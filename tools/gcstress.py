"""A pytest plugin that runs Python's cyclic garbage collector far more often than by default, so that a C extension
object the collector trips over crashes the run at once instead of once in several runs (docs/development.md):

    PYTHONPATH=tools .venv/bin/python -X faulthandler -m pytest -q -p gcstress tests
"""

import gc


def pytest_configure(config) -> None:
    gc.set_threshold(100, 5, 5)
