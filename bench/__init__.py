"""Benchmarks comparing Lathe with the tools a user would pick instead. Not tests."""
