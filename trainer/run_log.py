"""What a run leaves for people to read: ``metrics.jsonl`` (one line per step) and PNG plots of it.

metrics.jsonl carries at least ``step`` and ``reward`` (the mean combined reward over the step's samples that
counted) and every other figure of the step. On resume, lines of steps after the checkpoint (steps that will
be run again) are dropped, so the file always describes one history.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        self.history: list[dict[str, Any]] = []
        if self.path.exists():
            if resume_step is None:
                self.path.unlink()  # a fresh run in an old directory starts a new history
            else:
                lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
                self.history = [r for r in lines if r.get("step", 0) <= resume_step]
                self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history))

    def append(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _smooth(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def _panel(ax, history: list[dict[str, Any]], key: str, label: str) -> None:
    steps, values = _series(history, key)
    if steps:
        line = ax.plot(steps, values, alpha=0.3, linewidth=1)[0]
        window = max(1, len(values) // 20)
        ax.plot(
            steps, _smooth(values, window), color=line.get_color(), linewidth=2, label=f"{label} (mean of {window})"
        )
        ax.legend(loc="best", fontsize=8)
    ax.set_ylabel(label, fontsize=8)
    ax.grid(alpha=0.3)


def write_plots(history: list[dict[str, Any]], run_dir: Path) -> list[Path]:
    """reward.png (the combined reward, then each source on its own scale) and kl.png, rewritten in place; kl.png
    only once a step has a KL (with β = 0 there is no reference model, and an empty plot would say nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({k for r in history for k in r if k.startswith("reward/")})
    panels = {
        "reward.png": [("reward", "combined reward"), *[(k, k.removeprefix("reward/")) for k in sources]],
        "kl.png": [("kl", "KL to the reference (k3, per token)")],
    }
    if all(r.get("kl") is None for r in history):  # the run log stores a missing figure (nan) as None
        del panels["kl.png"]
    written = []
    for name, keys in panels.items():
        fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.2 + 1.8 * len(keys)), dpi=100, sharex=True, squeeze=False)
        for ax, (key, label) in zip(axes[:, 0], keys):
            _panel(ax, history, key, label)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        tmp = run_dir / f".{name}.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(run_dir / name)
        written.append(run_dir / name)
    return written
