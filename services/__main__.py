"""``python -m services`` is the ``rewardline`` command."""

import sys

from services.cli import main

sys.exit(main())
