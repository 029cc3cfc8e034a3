"""splitpack.runtimes."""
