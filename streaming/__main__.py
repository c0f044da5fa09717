"""``python -m streaming``: see :mod:`streaming.cli`."""

import sys

from .cli import main

sys.exit(main())
