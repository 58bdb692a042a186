"""Confirm-or-revert: an apply that undoes itself unless confirmed in time."""
