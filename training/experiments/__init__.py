"""Experiments built on the training package: the CapFilt effect in miniature and the demo model."""
