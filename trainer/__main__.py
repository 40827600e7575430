"""``python -m rewardline.trainer`` is the ``rewardline`` command (``torchrun -m rewardline.trainer train ...``)."""

import sys

from rewardline.services.cli import main

sys.exit(main())
