"""``python -m lfr.cli``: the ``lfr`` command."""

import sys

from lfr.cli import main

sys.exit(main())
