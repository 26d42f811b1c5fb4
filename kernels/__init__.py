"""Backends under test: one subpackage per backend, and the registry that finds them."""
