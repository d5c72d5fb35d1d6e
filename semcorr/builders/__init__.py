"""Builders: pure functions from store tables to splits, pairs, labels and statistics."""
