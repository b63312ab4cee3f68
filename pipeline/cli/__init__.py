"""The ``avfuse`` command line: one click group (``main``), every command of the product.

One module per command family; shared options live in ``options.py`` (training
recipe) and ``dask_options.py`` (cluster flags). ``main.COMMANDS`` maps a command
name to its module, loaded lazily so that ``avfuse --help`` is instant.
"""

from pipeline.cli.main import COMMANDS, cli, main

__all__ = ["COMMANDS", "cli", "main"]
