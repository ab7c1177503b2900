"""The installed mechjax version, recorded in run directories and generated pages."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mechjax")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
