"""The ``conveyor`` command line. See ``conveyor.cli.main``."""
