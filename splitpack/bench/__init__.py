"""splitpack.bench: benchmark harnesses (runtime, serving, concurrency, selector, predictor
replay) and their plots. Not imported by any package a device or edge runs; its plotting needs
the ``bench`` extra (matplotlib)."""
