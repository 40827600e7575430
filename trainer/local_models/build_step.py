"""One build step in a process of its own, as build.py's `_StepProcesses` starts it: the request (step, key,
build root, config, where to write the step's manifest entry) comes as JSON on standard input."""

from __future__ import annotations

import json
import sys

from rewardline.trainer.local_models.build import run_requested_step

if __name__ == "__main__":
    run_requested_step(json.load(sys.stdin))
