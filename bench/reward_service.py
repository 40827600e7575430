"""Reward service throughput and latency against the same model run in-process.

    .venv/bin/python bench/reward_service.py [--seconds 20] [--clients 1,32] [--threads 2]
                                             [--model anchor|large] [--device cpu|cuda] [--dtype float32|bfloat16]

For each client count, N concurrent asyncio clients send single-sample Score calls to the service for a
fixed time; served samples/s and p50/p99 latency are printed beside:
  * in-process: the same model, same backend code, no gRPC, on batches of the size the server actually ran
    (read from its batch-size histogram), composed the way its batcher composes them;
  * naive: the same server with --max-batch-size 1, one forward pass per request, as a server without
    cross-request batching does;
  * no padding limit: the same server with --max-batch-padding off (on CPU the default holds padding to 10%);
  * in-process b1/s: one sample per forward, in-process, over the whole pool: on a CPU, where one sample
    already keeps the core busy, about the most any batching can reach;
  * overhead at 1 client: served p50 minus the in-process batch-1 forward p50.
The model is a Llama reward model of hidden 256, 4 layers, 8 heads of 32, ~1000-token vocabulary (~3.4M
parameters) on samples of 64-256 tokens of mixed length, so the forward pass dominates; ``--model large`` is the
~200M-parameter one of bench/common.py (for a GPU). Service and in-process reference run on the same
``--device`` and ``--dtype`` (bench/gpu/serve_matrix.py drives the GPU matrix with these functions).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import BenchModel, percentile_ms, print_table  # noqa: E402
from rewardline.services.api import pb  # noqa: E402
from rewardline.services.batching import select_batch  # noqa: E402
from rewardline.services.client import AsyncRewardClient  # noqa: E402
from rewardline.services.metrics import sample_value as metric  # noqa: E402
from rewardline.services.metrics import scrape as metrics  # noqa: E402
from rewardline.services.process import ServiceProcess  # noqa: E402


async def drive(target: str, pool: list[pb.Sample], clients: int, seconds: float, warmup: float) -> dict:
    """N clients, each sending one sample at a time; counts only what finishes inside the window."""
    latencies: list[float] = []
    done = 0
    start = time.monotonic() + warmup
    stop = start + seconds

    async def one(client: AsyncRewardClient, worker: int) -> None:
        nonlocal done
        i = worker
        while True:
            sample = pool[i % len(pool)]
            i += clients
            t0 = time.monotonic()
            if t0 >= stop:
                return
            await client.score([sample])
            t1 = time.monotonic()
            if t0 >= start and t1 <= stop:
                latencies.append(t1 - t0)
                done += 1

    async with AsyncRewardClient(target, timeout=120) as client:
        await asyncio.gather(*(one(client, w) for w in range(clients)))
    return {
        "samples_s": done / seconds,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "n": done,
    }


def served(
    model: BenchModel,
    clients: int,
    seconds: float,
    threads: int,
    extra: list[str],
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    args = ["--model", str(model.path), "--num-threads", str(threads), "--cache-size", "0", *extra]
    args += ["--device", device, "--dtype", dtype]
    with ServiceProcess("reward", args, threads=threads) as svc:
        before = metrics(svc.metrics_port)
        result = asyncio.run(drive(svc.target, model.samples, clients, seconds, warmup=2.0))
        after = metrics(svc.metrics_port)
    batches = metric(after, "rewardline_batch_size_count") - metric(before, "rewardline_batch_size_count")
    batched = metric(after, "rewardline_batch_size_sum") - metric(before, "rewardline_batch_size_sum")
    result["mean_batch"] = batched / batches if batches else 0.0
    return result


def in_process(
    model: BenchModel,
    batch_size: int,
    window: int,
    seconds: float,
    device: str = "cpu",
    dtype: str = "float32",
    one_by_one: bool = True,
) -> dict:
    """The backend's own forward on batches composed like the server's: length-aware out of a window of
    ``window`` waiting samples (the concurrency), at most ``batch_size`` each, under the service's padding limit
    on CPU; and (``one_by_one``) one sample per forward over the whole pool."""
    backend = model.backend(device, dtype)
    max_padding = backend.max_padding
    ids = model.token_ids
    backend.forward(ids[:batch_size])
    done, i, t0 = 0, 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        waiting = [ids[(i + k) % len(ids)] for k in range(window)]
        chosen = select_batch([len(x) for x in waiting], 1 << 30, batch_size, "padded", max_padding)
        backend.forward([waiting[k] for k in chosen])
        done += len(chosen)
        i += len(chosen)
    elapsed = time.monotonic() - t0
    if not one_by_one:
        return {"samples_s": done / elapsed}
    single = []
    for x in ids:  # every sample of the pool, as the single client sends them
        s = time.perf_counter()
        backend.forward([x])
        single.append(time.perf_counter() - s)
    return {
        "samples_s": done / elapsed,
        "batch1_p50_ms": 1000 * statistics.median(single),
        "batch1_s": len(single) / sum(single),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="1,32")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("BENCH_THREADS", "1")),
        help="torch threads, the same for the service and the in-process reference",
    )
    parser.add_argument("--model", choices=("anchor", "large"), default="anchor", help="bench/common.py BENCH_SIZES")
    parser.add_argument("--device", default="cpu", help="where the service and the in-process reference run")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args()
    on = {"device": args.device, "dtype": args.dtype}
    import torch

    torch.set_num_threads(args.threads)
    model = BenchModel.load_or_build(REPO / ".cache" / "bench", args.model)
    print(
        f"model: {model.parameters / 1e6:.2f}M parameters, vocabulary {model.vocab}, samples "
        f"{model.min_len}-{model.max_len} tokens "
        f"(mean {model.mean_len:.0f}), {args.device} {args.dtype}, "
        f"torch threads {args.threads}, {args.seconds:.0f}s per run"
    )
    rows = []
    counts = [int(c) for c in args.clients.split(",")]
    for clients in counts:
        s = served(model, clients, args.seconds, args.threads, [], **on)
        ref = in_process(model, max(1, round(s["mean_batch"])), clients, args.seconds, **on)
        row = {
            "clients": clients,
            "served/s": s["samples_s"],
            "p50 ms": s["p50_ms"],
            "p99 ms": s["p99_ms"],
            "mean batch": s["mean_batch"],
            "in-process/s": ref["samples_s"],
            "served/in-process": s["samples_s"] / ref["samples_s"],
        }
        if clients == 1:
            row["overhead ms"] = s["p50_ms"] - ref["batch1_p50_ms"]
            row["in-process b1 p50 ms"] = ref["batch1_p50_ms"]
        if clients > 1:
            naive = served(model, clients, args.seconds, args.threads, ["--max-batch-size", "1"], **on)
            row["naive/s"] = naive["samples_s"]
            row["naive p99 ms"] = naive["p99_ms"]
            row["served/naive"] = s["samples_s"] / naive["samples_s"]
            unlimited = served(model, clients, args.seconds, args.threads, ["--max-batch-padding", "off"], **on)
            row["no padding limit/s"] = unlimited["samples_s"]
            row["in-process b1/s"] = ref["batch1_s"]
        rows.append(row)
    print_table(rows)


if __name__ == "__main__":
    random.seed(0)
    main()
