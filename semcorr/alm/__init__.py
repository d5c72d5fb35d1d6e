"""Automatic labelling module (ALM): a top-down keypoint detector on instance crops (torch)."""
