"""splitpack.bench: benchmark harnesses (runtime, serving, concurrency, selector, predictor
replay) and their plots. Not imported by any package a device or edge runs, nor by the
``splitpack`` command until a ``bench`` command runs (it reads only :mod:`.defaults`); the
plotting needs the ``bench`` extra (matplotlib)."""
