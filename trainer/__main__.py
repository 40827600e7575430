"""``python -m rewardline.trainer`` is the ``rewardline`` command (``torchrun -m rewardline.trainer train ...``)."""

import sys

from rewardline.services.cli import main

if __name__ == "__main__":  # not when a spawned child (vLLM's engine process) imports the main module
    sys.exit(main())
