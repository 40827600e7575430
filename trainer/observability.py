"""The trainer's Prometheus metrics, in one place.

Each trainer gets its own registry (tests run several trainers in one process, and a trainer embedded next to
a service must not collide with the service's default-registry metrics). Names start with
``rewardline_trainer_`` so one Prometheus can scrape services and trainers side by side.
"""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rewardline.services.metrics import NO_TOKEN

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.step = Gauge("rewardline_trainer_step", "Optimizer steps taken", registry=r)
        self.reward = Gauge(
            "rewardline_trainer_reward",
            "Mean combined reward of the last step (weighted sum of source scores)",
            registry=r,
        )
        self.source_reward = Gauge(
            "rewardline_trainer_source_reward",
            "Mean score of each reward source in the last step",
            ["source"],
            registry=r,
        )
        self.kl = Gauge("rewardline_trainer_kl", "Mean per-token KL to the reference (k3) in the last step", registry=r)
        self.entropy = Gauge("rewardline_trainer_entropy", "Mean per-token policy entropy in the last step", registry=r)
        self.clip_fraction = Gauge(
            "rewardline_trainer_clip_fraction",
            "Fraction of tokens whose ratio was clipped in the last step",
            registry=r,
        )
        self.advantage_mean = Gauge(
            "rewardline_trainer_advantage_mean", "Mean advantage over valid samples in the last step", registry=r
        )
        self.advantage_std = Gauge(
            "rewardline_trainer_advantage_std", "Std of the advantages in the last step", registry=r
        )
        self.loss = Gauge("rewardline_trainer_loss", "Total loss of the last step", registry=r)
        self.tokens_per_second = Gauge(
            "rewardline_trainer_tokens_per_second", "Completion tokens generated per second of step time", registry=r
        )
        self.step_seconds = Histogram(
            "rewardline_trainer_step_seconds", "Wall time of a training step", buckets=STEP_BUCKETS, registry=r
        )
        self.reward_wait_seconds = Counter(
            "rewardline_trainer_reward_wait_seconds",
            "Time spent waiting for rewards after generation had finished",
            registry=r,
        )
        self.waiting_for_source = Gauge(
            "rewardline_trainer_waiting_for_source",
            "1 while a reward source is unreachable and training waits for it",
            ["source"],
            registry=r,
        )
        self.source_outages = Counter(
            "rewardline_trainer_source_outages", "Times a reward source became unreachable", ["source"], registry=r
        )
        self.duplicate_rewards = Counter(
            "rewardline_trainer_duplicate_rewards",
            "Rewards received again for a sample already answered (ignored)",
            ["source"],
            registry=r,
        )
        self.reward_errors = Counter(
            "rewardline_trainer_reward_errors", "Samples a source refused or failed to score", ["source"], registry=r
        )
        self.out_of_distribution = Counter(
            "rewardline_trainer_out_of_distribution",
            "Samples a source flagged out of distribution",
            ["source"],
            registry=r,
        )
        self.samples = Counter("rewardline_trainer_samples", "Completions generated", registry=r)
        self.generated_tokens = Counter(
            "rewardline_trainer_generated_tokens", "Completion tokens generated", registry=r
        )
        self.paused = Gauge(
            "rewardline_trainer_paused", "1 while training is paused through the control API", registry=r
        )
        self.auth_refusals = Counter(
            "rewardline_trainer_auth_refusals",
            "Control API calls refused for their bearer token, by token name ((none): no known token) and status",
            ["token", "code"],
            registry=r,
        )

    def auth_outcome(self, token_name: str, code: grpc.StatusCode) -> None:
        """The control API's token check observer (services/auth.py): refusals counted by token name."""
        if code is not grpc.StatusCode.OK:
            self.auth_refusals.labels(token=token_name or NO_TOKEN, code=code.name).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Starts the /metrics exporter; returns the port (0 picks a free one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
