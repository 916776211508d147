"""Subcommands of the ``fedai`` CLI that are not owned by a library subpackage."""
