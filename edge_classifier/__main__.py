"""``python -m edge_classifier`` is the ``edge-classifier`` command."""

import sys

from .cli import main

sys.exit(main())
