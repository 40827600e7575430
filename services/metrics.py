"""The Prometheus metrics every service exports (prometheus-client's own exporter serves them).

One set per process: a service process serves one model. Kind-specific metrics (uncertainty, judge) live
here too so that a dashboard finds every ``rewardline_*`` series in one place.
"""

from __future__ import annotations

import grpc
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)

# The *_created series double the exposition for no use on dashboards.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
SCORE_BUCKETS = (-10, -5, -3, -2, -1, -0.5, 0, 0.25, 0.5, 0.75, 1, 2, 3, 5, 10)
STD_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5)
NO_TOKEN = "(none)"  # no token, or one the file does not list; token names cannot contain parentheses


class ServiceMetrics:
    """Counters, gauges and histograms of one serving process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.requests = Counter(
            "rewardline_requests", "RPCs finished, by method and gRPC status code", ["method", "code"], registry=r
        )
        self.samples = Counter("rewardline_samples", "Samples received, by method", ["method"], registry=r)
        self.latency = Histogram(
            "rewardline_request_latency_seconds",
            "RPC latency, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "rewardline_queue_wait_seconds",
            "Time a sample waited in the queue before its batch ran",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rewardline_batch_size", "Samples per forward batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "rewardline_batch_tokens", "Padded tokens per forward batch", buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_latency = Histogram(
            "rewardline_batch_latency_seconds", "Backend time per forward batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("rewardline_queue_depth", "Samples waiting in the queue", registry=r)
        self.inflight = Gauge(
            "rewardline_inflight_requests", "RPCs being served now (the autoscaling signal)", registry=r
        )
        self.cache_hits = Counter("rewardline_cache_hits", "Samples answered from the score cache", registry=r)
        self.cache_misses = Counter("rewardline_cache_misses", "Samples that needed a forward pass", registry=r)
        self.truncated = Counter("rewardline_truncated_samples", "Samples cut to max_length", registry=r)
        self.scores = Histogram("rewardline_score", "Distribution of Reward.score", buckets=SCORE_BUCKETS, registry=r)
        self.backend_errors = Counter(
            "rewardline_backend_errors", "Forward batches that failed in the backend", registry=r
        )
        self.auth_refusals = Counter(
            "rewardline_auth_refusals",
            "Calls refused for their bearer token (UNAUTHENTICATED, PERMISSION_DENIED), by token name: the name in the "
            "token file, or (none) when no known token came (the token itself is never a label)",
            ["token", "code"],
            registry=r,
        )
        self.model_info = Info("rewardline_model", "The model being served", registry=r)
        self.serving = Gauge("rewardline_serving", "1 when the health status is SERVING", registry=r)
        # uncertainty services
        self.uncertainty_std = Histogram(
            "rewardline_uncertainty_std", "Distribution of Uncertainty.std", buckets=STD_BUCKETS, registry=r
        )
        self.ood = Counter("rewardline_out_of_distribution", "Rewards flagged out of distribution", registry=r)
        # judges
        self.judge_unparsed = Counter(
            "rewardline_judge_unparsed", "Judge outputs with no readable verdict or rating", registry=r
        )
        self.judge_generated_tokens = Counter(
            "rewardline_judge_generated_tokens", "Tokens judges generated (rationales)", registry=r
        )

    def auth_outcome(self, token_name: str, code: grpc.StatusCode) -> None:
        """The token check's observer (services/auth.py): refusals counted by token name."""
        if code is not grpc.StatusCode.OK:
            self.auth_refusals.labels(token=token_name or NO_TOKEN, code=code.name).inc()


def start_exporter(port: int, host: str = "0.0.0.0") -> None:
    """Serves /metrics on ``port`` (0: no exporter)."""
    if port:
        start_http_server(port, addr=host)


MetricsSnapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, host: str = "127.0.0.1") -> MetricsSnapshot:
    """Every sample of a /metrics page, keyed by (name, sorted labels): for benchmarks, the demo, tests."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample_value(snapshot: MetricsSnapshot, metric_name: str, **labels: str) -> float:
    return snapshot.get((metric_name, tuple(sorted(labels.items()))), 0.0)
