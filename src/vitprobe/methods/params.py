"""Parameters shared by several methods: one object, so one name, default and meaning everywhere."""

from __future__ import annotations

from ..fusion import FUSIONS
from .base import Param

LAYER = Param("layer", -1, "layer whose attention is drawn (negative counts back from the last)", "layer")
HEAD_FUSION = Param("head_fusion", "mean", "how the heads are fused", "choice", choices=FUSIONS)
HEAD = Param("head", None, "draw this one head instead of fusing the heads", "head")
LAYER_FUSION = Param("layer_fusion", "mean", "how the layers are aggregated", "choice", choices=FUSIONS)
DISCARD_RATIO = Param("discard_ratio", 0.0, "drop this fraction of the lowest fused attention (never the CLS column)",
                      "float", low=0.0, high=1.0, high_open=True)
PATCH = Param("patch", None, "the query patch (row, col) whose own attention is drawn; video models: (step, row, "
              "col) or (row, col) of the middle tubelet step", "patch")
FRAME = Param("frame", None, "video models: the frame of the clip holding the query (its tubelet step), with query_xy "
              "or a (row, col) patch", "int", low=0)
QUERY_XY = Param("query_xy", None, "the query point (x, y) in pixels of the original image (instead of patch)",
                 "point")
TARGET = Param("target", None, "what the map explains: a class index or label, 'self' (the image's embedding) or "
               "'image:PATH' (another image's); default: the top class, or 'self' without a head", "target")
START_LAYER = Param("start_layer", 0, "the first layer the method uses (a later one: fewer layers, faster)", "layer")
