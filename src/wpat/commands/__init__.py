"""One module per ``wpat`` subcommand, each with ``configure(parser)`` and ``run(args)``."""
