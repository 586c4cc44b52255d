"""``python -m edge_classifier`` is the ``edge-classifier`` command."""

import sys

from edge_classifier.cli.main import main

sys.exit(main())
