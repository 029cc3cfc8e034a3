"""splitpack.compiler."""
