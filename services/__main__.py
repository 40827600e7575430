"""``python -m services`` is the ``rewardline`` command."""

import sys

from rewardline.services.cli import main

sys.exit(main())
