"""splitpack.serving: the edge — the HTTP server of a bundle's tails, its Ray Serve deployment and
the Triton model-repository export."""

ENGINES = ("local", "ray")  # one uvicorn process (serving.edge); Ray Serve (serving.ray_serve)
