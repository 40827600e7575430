"""rewardline's serving side: the gRPC reward services, their shared pipeline, backends and client."""

import os
from importlib.metadata import PackageNotFoundError, version

# gRPC's C core reads this once, at import: keep its INFO lines (a GOAWAY on every channel teardown) out of
# the quiet-by-default logs. A user's own setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

try:
    __version__ = version("rewardline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
