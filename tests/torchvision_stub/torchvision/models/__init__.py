"""torchvision.models stand-in: the ``resnet`` and ``vision_transformer`` submodules that zennit and LXT import
(their block classes exist for isinstance checks and raise when built); every other model name raises too."""

from .. import placeholder
from . import resnet, vision_transformer

__all__ = ["resnet", "vision_transformer"]


def __getattr__(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
