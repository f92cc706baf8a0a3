"""Fixtures of the end-to-end tests (defined in harness.py)."""

from tests.e2e.harness import database, deployment

__all__ = ["database", "deployment"]
