"""torchvision.ops.misc stand-in: FrozenBatchNorm2d exists for timm's isinstance checks, and raises if built."""

from torch import nn

from .. import _StubError


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, *_args, **_kwargs) -> None:
        raise _StubError("FrozenBatchNorm2d is not available: only the vitprobe test stand-in of torchvision is here")
