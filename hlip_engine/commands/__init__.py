"""One module per ``hlip`` subcommand (see :mod:`hlip_engine.cli`)."""
