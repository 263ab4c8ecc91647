"""``python -m wpat ...`` (and ``torchrun ... -m wpat train ...``) runs the ``wpat`` command line."""

import sys

from wpat.cli import main

sys.exit(main())
