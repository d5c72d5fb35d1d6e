"""Evaluation: PCK (SPair), mPCK with Kuhn-Munkres matching and mask mIoU (MISC)."""
