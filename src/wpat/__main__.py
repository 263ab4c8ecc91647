"""``python -m wpat ...`` (and ``torchrun ... -m wpat train ...``) runs the ``wpat`` command line."""

import os
import sys

from wpat.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, once the command has returned (its files written, its process group left),
    # the interpreter's teardown has aborted ranks at random ("terminate called without an active
    # exception", SIGABRT) in native threads of the collectives, and torchrun then reports the
    # finished run as failed. Nothing is left to do: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
