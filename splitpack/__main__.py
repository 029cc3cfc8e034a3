"""``python -m splitpack``: the same as the ``splitpack`` command."""

from splitpack.cli import run_as

run_as([])
