"""The package version (one place: pyproject reads it, the manifest records it)."""

__version__ = "0.1.0"
