"""``rewardline demo``: the whole product on local models, on a machine with no network.

Builds (or reuses) the local models, starts the reward service as its own process on loopback, scores
held-out preference pairs through the client — each correct answer beside a wrong one — prints them, and
stops the service cleanly.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from services.client import RewardClient
from services.config import LogLevel
from services.process import ServiceProcess

log = logging.getLogger(__name__)


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: Path = Field(Path(".cache/models"), description="where the local models are built (reused when current)")
    out: Path = Field(Path("runs/demo"), description="where the demo writes its results and service logs")
    pairs: int = Field(6, gt=0, description="held-out preference pairs to score")
    log_level: LogLevel = Field("warning", description="log level")


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_demo(config: DemoConfig) -> int:
    from trainer.local_models.build import ensure_models

    started = time.monotonic()
    print(f"[1/3] local models in {config.models} (built once, about two minutes; reused afterwards)")
    models = ensure_models(config.models)
    config.out.mkdir(parents=True, exist_ok=True)
    lines = (models / "data" / "prefs_test.jsonl").read_text().splitlines()[: config.pairs]
    pairs = [json.loads(line) for line in lines]

    print("[2/3] starting the reward service (rewardline serve reward) on loopback")
    with ServiceProcess("reward", ["--model", str(models / "reward")], log_path=config.out / "reward-service.log") as svc:
        with RewardClient(svc.target) as client:
            info = client.info()
            print(f"      serving {info.model_name} revision {info.revision} on {svc.target} ({info.backend}, {info.device})")
            print("[3/3] scoring held-out pairs through the client")
            samples = []
            for i, pair in enumerate(pairs):
                samples.append({"id": f"{i}-chosen", "prompt": pair["prompt"], "response": pair["chosen"]})
                samples.append({"id": f"{i}-rejected", "prompt": pair["prompt"], "response": pair["rejected"]})
            rewards = {r.id: r.score for r in client.score(samples)}
    print(f"\n{'prompt':<28} {'correct response':<22} {'reward':>7}   {'wrong response':<22} {'reward':>7}")
    right = 0
    for i, pair in enumerate(pairs):
        chosen, rejected = rewards[f"{i}-chosen"], rewards[f"{i}-rejected"]
        right += chosen > rejected
        print(f"{_truncate(pair['prompt'], 28):<28} {_truncate(pair['chosen'], 22):<22} {chosen:>7.2f}   "
              f"{_truncate(pair['rejected'], 22):<22} {rejected:>7.2f}")
    print(f"\nthe reward model preferred the correct answer in {right} of {len(pairs)} pairs; "
          f"service stopped cleanly; {time.monotonic() - started:.0f} s in all")
    return 0
