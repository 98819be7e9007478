"""torchvision.datasets stand-in: every dataset class exists and raises when built."""

from .. import placeholder


def __getattr__(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(__name__, name)
