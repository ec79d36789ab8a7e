"""The installed version of adaptix."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adaptix")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
