"""The named choices the command line shows and checks before torch is imported; the modules that
implement them take the names from here."""

FUSIONS = ("mean", "max", "min")
"""How heads, layers and patch maps are fused (``fusion.reduce_over``)."""

FINDERS = ("components", "weighted", "peaks", "mass")
"""How keypoints are found in a map (``analysis.keypoints.find``)."""

DEFAULT_METHODS = "cls,layers,rollout"
"""What ``vitprobe explain`` draws when no --method is given."""

COMPARED_MAPS = "cls,rollout"
"""The maps ``vitprobe compare`` correlates image by image when no --map-method is given."""

DEFAULT_CLIP = 99.0
"""Top of a colour scale as a percentile of the map: a handful of extreme patches (e.g. DINOv2's
artifact tokens) saturate instead of darkening the rest of the map; 100 is the plain maximum."""

VIDEO_SHORT_SIDE = 224
"""Model-input short side of a video frame unless given: speed first (the offline model runs about 5
frames/s at 224 px on 2 CPU cores, 0.4 at its own 448)."""
