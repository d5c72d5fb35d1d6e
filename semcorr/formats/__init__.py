"""Interchange with pose tools (SLEAP, DeepLabCut, NWB, Label Studio), through sleap-io; one module per format."""
