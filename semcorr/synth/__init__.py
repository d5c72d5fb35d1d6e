"""Synthetic renderer: annotated images with exact labels from a 3D prototype."""
