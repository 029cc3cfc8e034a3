"""splitpack.packaging."""
