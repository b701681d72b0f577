"""Benchmarks of sparsecircuits against the bare model and the field's libraries (see run.py)."""
