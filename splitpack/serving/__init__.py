"""splitpack.serving: the edge — the HTTP server of a bundle's tails, its Ray Serve deployment and
the Triton model-repository export."""
