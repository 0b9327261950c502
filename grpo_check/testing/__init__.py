"""Invariant assertions, hypothesis strategies and probe tasks for users' own test suites."""
