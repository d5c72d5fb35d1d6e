"""Exports: one module per format that trainers read."""
