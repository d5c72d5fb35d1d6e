"""The human-machine annotation loop: round planning, Label Studio review, provenance."""
