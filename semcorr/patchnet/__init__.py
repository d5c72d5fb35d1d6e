"""Learned patch comparison (Zagoruyko & Komodakis 2015) and correspondence quality control."""
