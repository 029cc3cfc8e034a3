"""``python -m splitpack.cli``: the same as the ``splitpack`` command."""

from splitpack.cli import run_as

run_as([])
