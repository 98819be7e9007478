"""torchvision.ops stand-in: only the ``misc`` submodule timm imports."""
