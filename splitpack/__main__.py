"""``python -m splitpack``: the same as the ``splitpack`` command."""

import sys

from splitpack.cli import main

sys.exit(main())
