"""The ``sthelar`` command line: the application edge over the library and the Dagster definitions.

Kept outside ``sthelar_platform`` because it starts Dagster runs; the library never imports Dagster.
"""

from sthelar_cli.main import main

__all__ = ["main"]
