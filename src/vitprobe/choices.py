"""The named choices the command line shows and checks before torch is imported; the modules that
implement them take the names from here."""

FUSIONS = ("mean", "max", "min")
"""How heads, layers and patch maps are fused (``fusion.reduce_over``)."""

FINDERS = ("components", "weighted", "peaks", "mass")
"""How keypoints are found in a map (``analysis.keypoints.find``)."""

DEFAULT_METHODS = "cls,layers,rollout"
"""What ``vitprobe explain`` draws when no --method is given."""
