"""The ``edge-classifier`` command line: argument parsing and printing only."""

from edge_classifier.cli.main import main  # noqa: F401
