"""splitpack.predictors."""
