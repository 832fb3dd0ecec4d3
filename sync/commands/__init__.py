"""The ``stepsync`` subcommands, one module per group."""
