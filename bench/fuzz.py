"""The long fuzzing run: tests/test_fuzz.py's strategies (tests/fuzzing.py), many examples, against real services.

    .venv/bin/python bench/fuzz.py [--examples 500] [--kinds reward,judge] [--seed 0]

Starts each kind (``rewardline serve``, small limits so that inputs reach them), sends ``--examples`` examples of
every property (Score, ScoreStream, Compare, raw bytes to each unary method, raw bytes on a stream), and prints the
count of every status per method and of every in-band code on streams. Exits 1 on the first UNKNOWN or INTERNAL
answer (printing the input, shrunk by hypothesis), on a service that died, or one whose health is not SERVING after.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import grpc  # noqa: E402
from fuzzing import RAW, Prober, compare_requests, score_requests, stream_raw, stream_requests  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rewardline.services.process import ServiceProcess, start_all  # noqa: E402

MODELS = REPO / ".cache" / "models"
LIMITS = ["--max-samples-per-request", "4", "--max-queue-samples", "16"]


def properties(prober: Prober, examples: int, seed: int) -> dict[str, Callable[[], None]]:
    """The properties of tests/test_fuzz.py, bound to ``prober``, with ``examples`` examples each."""
    config = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )

    @config
    @given(request=score_requests)
    def score(request):  # type: ignore[no-untyped-def]  # hypothesis supplies the arguments
        prober.score(request)

    @config
    @given(requests=stream_requests)
    def score_stream(requests):  # type: ignore[no-untyped-def]  # hypothesis supplies the arguments
        prober.score_stream(requests)

    @config
    @given(request=compare_requests)
    def compare(request):  # type: ignore[no-untyped-def]  # hypothesis supplies the arguments
        prober.compare(request)

    @config
    @given(method=st.sampled_from(sorted(RAW)), data=st.data())
    def raw_unary(method, data):  # type: ignore[no-untyped-def]  # hypothesis supplies the arguments
        prober.call(method, data.draw(RAW[method]))

    @config
    @given(messages=stream_raw)
    def raw_stream(messages):  # type: ignore[no-untyped-def]  # hypothesis supplies the arguments
        prober.stream_raw(messages)

    tests = {"Score": score, "ScoreStream": score_stream, "Compare": compare, "raw unary": raw_unary}
    tests["raw stream"] = raw_stream
    return {name: hypothesis_seed(seed)(test) for name, test in tests.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=500, help="examples per property")
    parser.add_argument("--kinds", default="reward,judge", help="comma-separated service kinds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    services = []
    for kind in kinds:
        extra = ["--backend", "hf"] if kind == "judge" else ["--max-length", "128"]
        services.append(ServiceProcess(kind, ["--model", str(MODELS / kind), *extra, *LIMITS]))
    start_all(services)
    failed = False
    try:
        for svc in services:
            with grpc.insecure_channel(svc.target) as channel:
                prober = Prober(channel)
                started = time.monotonic()
                for name, test in properties(prober, args.examples, args.seed).items():
                    t0 = time.monotonic()
                    try:
                        test()
                        outcome = "passed"
                    except AssertionError as e:
                        failed, outcome = True, f"FAILED: {e}"
                    print(
                        f"[fuzz] {svc.kind} {name}: {args.examples} examples, {time.monotonic() - t0:.0f} s, {outcome}"
                    )
                alive = svc.process is not None and svc.process.poll() is None
                health = health_pb2_grpc.HealthStub(channel)
                serving = alive and health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == 1
                failed |= not serving
                print(
                    f"[fuzz] {svc.kind}: {sum(prober.counts.values())} calls and streamed samples in "
                    f"{time.monotonic() - started:.0f} s; alive {alive}, SERVING after {serving}"
                )
                for key, count in sorted(prober.counts.items()):
                    print(f"[fuzz] {svc.kind}   {key}: {count}")
    finally:
        for svc in services:
            svc.stop()
            svc.kill()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
