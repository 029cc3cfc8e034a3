"""splitpack.predictors: the accuracy predictor (fit on trained cells, transferred across cuts)
and the sampling of the cells to train. Used by the compiler."""
