"""splitpack.predictors: the accuracy predictor (fit on trained cells, transferred across cuts)
and the sampling of the cells to train. Used by the compiler."""

__all__ = ["DEFAULT_SAMPLE_SECONDS"]

# Seconds of training the compile's sampling may spend by default (``predictors.sampling``): with
# the other steps it keeps a compile of the CIFAR reference models within 15 minutes on a 2-core
# host (benchmarks/README.md). Here, not in ``sampling``, so that option parsers read it cheaply.
DEFAULT_SAMPLE_SECONDS = 480.0
