"""The one error type a user can cause, and how the CLI shows it."""

from __future__ import annotations


class SparseCircuitsError(Exception):
    """A problem the user can fix (bad hook name, wrong dimensions, empty data, bad config), in one
    line saying what to do; the CLI prints it without a traceback and exits with status 2."""
