"""``python -m finazon_trio`` runs the command line."""

import sys

from finazon_trio.cli.main import main

sys.exit(main())
