"""torchvision.models.resnet stand-in: zennit's ResNet canonizer imports the two block classes."""

from .. import placeholder

Bottleneck = placeholder(__name__, "Bottleneck")
BasicBlock = placeholder(__name__, "BasicBlock")
ResNet = placeholder(__name__, "ResNet")


def __getattr__(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
