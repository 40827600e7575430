"""rewardline's serving side: the gRPC reward services, their shared pipeline, backends and client."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rewardline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
