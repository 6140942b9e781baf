"""Subcommands of the ``kldiv`` CLI; each module defines ``register(subparsers)``."""
