"""torchvision.models.vision_transformer stand-in: LXT's ``vit_torch`` patch map reads ``nn`` from this module
(torch.nn itself, as in torchvision, whose ViT is built from nn.LayerNorm, nn.GELU and nn.MultiheadAttention);
the model classes exist and raise when built."""

from torch import nn

from .. import placeholder

__all__ = ["nn"]

VisionTransformer = placeholder(__name__, "VisionTransformer")
EncoderBlock = placeholder(__name__, "EncoderBlock")
Encoder = placeholder(__name__, "Encoder")
MLPBlock = placeholder(__name__, "MLPBlock")


def __getattr__(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
