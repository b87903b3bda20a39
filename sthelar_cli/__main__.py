"""``python -m sthelar_cli``: the same as the ``sthelar`` command."""

import sys

from sthelar_cli.main import main

sys.exit(main())
