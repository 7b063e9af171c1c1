"""``python -m clinic.cli``: the ``clinic`` command."""

import sys

from . import main

sys.exit(main())
