"""Helpers shared by test modules (importable as `support`)."""
