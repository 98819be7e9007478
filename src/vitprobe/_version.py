"""The package version, written here only: the build reads it and so does ``vitprobe.__version__``."""

__version__ = "0.2.0"
