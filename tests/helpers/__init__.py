"""Helpers the tests (and benchmarks) share: builders of files, not fixtures (those live in conftest.py)."""
