"""The same model behind Triton and behind rewardline: samples/s and latency at the same concurrency.

    .venv/bin/python bench/triton_backend.py [--seconds 20] [--clients 32] [--threads 1] [--queue-delay-us 1000]

For each client count, N concurrent asyncio clients send one sample per call for a fixed time to:
  * triton direct: tritonserver (nvidia-pytriton's, Python backend, deploy/triton/model.py) through
    tritonclient's asyncio gRPC client, pre-tokenized inputs, Triton's dynamic batcher doing the batching;
  * service hf: ``rewardline serve reward`` with the in-process transformers backend (rendering,
    tokenization and rewardline's batcher included);
  * service triton: the same service with ``--backend triton`` in front of the same tritonserver.
Samples/s, p50 and p99 latency and the mean batch the model ran (the service's batch histogram; Triton's
inference/execution counts) are printed. The model is bench/common.py's benchmark reward model; caches off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import BenchModel, percentile_ms, print_table  # noqa: E402
from bench.reward_service import drive  # noqa: E402
from rewardline.services.metrics import sample_value as metric  # noqa: E402
from rewardline.services.metrics import scrape as metrics  # noqa: E402
from rewardline.services.process import ServiceProcess, free_port  # noqa: E402
from rewardline.services.triton.config import TritonRepoConfig, TritonStartConfig  # noqa: E402
from rewardline.services.triton.launcher import TritonServer  # noqa: E402
from rewardline.services.triton.protocol import ATTENTION_MASK, INPUT_IDS, LOGITS, channel_args, pad_batch  # noqa: E402
from rewardline.services.triton.repository import build_repository, model_facts  # noqa: E402

MODEL_NAME = "bench"


async def drive_triton(
    url: str, token_ids: list[tuple[int, ...]], pad_id: int, clients: int, seconds: float, warmup: float
) -> dict:
    """N clients, each sending one pre-tokenized sample per ModelInfer; counts what finishes in the window."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.grpc import InferInput, InferRequestedOutput

    latencies: list[float] = []
    done = 0
    start = time.monotonic() + warmup
    stop = start + seconds

    def request(ids: tuple[int, ...]) -> list:
        inputs = []
        for name, array in zip((INPUT_IDS, ATTENTION_MASK), pad_batch([ids], pad_id)):
            tensor = InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    async def one(client, worker: int) -> None:  # type: ignore[no-untyped-def]
        nonlocal done
        i = worker
        while True:
            inputs = request(token_ids[i % len(token_ids)])
            i += clients
            t0 = time.monotonic()
            if t0 >= stop:
                return
            await client.infer(MODEL_NAME, inputs, outputs=[InferRequestedOutput(LOGITS)], client_timeout=120)
            t1 = time.monotonic()
            if t0 >= start and t1 <= stop:
                latencies.append(t1 - t0)
                done += 1

    async with grpcclient.InferenceServerClient(url, channel_args=channel_args()) as client:
        await asyncio.gather(*(one(client, w) for w in range(clients)))
    return {
        "samples_s": done / seconds,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "n": done,
    }


def triton_batches(url: str) -> tuple[int, int]:
    """(inferences, executions) Triton has run for the model so far."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        (stats,) = client.get_inference_statistics(MODEL_NAME).model_stats
    return int(stats.inference_count), int(stats.execution_count)


def served(model: BenchModel, clients: int, seconds: float, threads: int, extra: list[str]) -> dict:
    args = ["--model", str(model.path), "--num-threads", str(threads), "--cache-size", "0", *extra]
    with ServiceProcess("reward", args, threads=threads) as svc:
        before = metrics(svc.metrics_port)
        result = asyncio.run(drive(svc.target, model.samples, clients, seconds, warmup=2.0))
        after = metrics(svc.metrics_port)
    batches = metric(after, "rewardline_batch_size_count") - metric(before, "rewardline_batch_size_count")
    batched = metric(after, "rewardline_batch_size_sum") - metric(before, "rewardline_batch_size_sum")
    result["mean_batch"] = batched / batches if batches else 0.0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="32")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("BENCH_THREADS", "1")),
        help="torch threads, the same for the service's hf backend and each Triton instance",
    )
    parser.add_argument(
        "--queue-delay-us", type=int, default=1000, help="Triton dynamic batcher's max_queue_delay_microseconds"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=64,
        help="the most samples in one forward pass, for Triton and the service",
    )
    parser.add_argument("--triton-concurrency", type=int, default=4, help="the service's batches in flight to Triton")
    args = parser.parse_args()

    model = BenchModel.load_or_build(REPO / ".cache" / "bench")
    repo = REPO / ".cache" / "bench" / "triton-repo"
    build_repository(
        TritonRepoConfig(
            model=model.path,
            out=repo,
            name=MODEL_NAME,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.queue_delay_us,
            num_threads=args.threads,
            force=True,
        )
    )
    pad_id = int(model_facts(model.path)["pad_token_id"])
    print(
        f"model: {model.parameters / 1e6:.2f}M parameters, samples {model.min_len}-{model.max_len} tokens "
        f"(mean {model.mean_len:.0f}), torch threads {args.threads}, {args.seconds:.0f}s per run, "
        f"Triton queue delay {args.queue_delay_us} us, max batch {args.max_batch_size}"
    )
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # Triton's stub inherits it
    triton = TritonServer(TritonStartConfig(repo=repo, grpc_port=free_port()), log_path=repo.parent / "triton.log")
    rows = []
    with triton:
        for clients in [int(c) for c in args.clients.split(",")]:
            before = triton_batches(triton.url)
            direct = asyncio.run(drive_triton(triton.url, model.token_ids, pad_id, clients, args.seconds, warmup=2.0))
            after = triton_batches(triton.url)
            direct["mean_batch"] = (after[0] - before[0]) / max(1, after[1] - before[1])
            hf = served(model, clients, args.seconds, args.threads, ["--max-batch-size", str(args.max_batch_size)])
            fronting = served(
                model,
                clients,
                args.seconds,
                args.threads,
                [
                    "--max-batch-size",
                    str(args.max_batch_size),
                    "--backend",
                    "triton",
                    "--triton-url",
                    triton.url,
                    "--triton-model",
                    MODEL_NAME,
                    "--triton-concurrency",
                    str(args.triton_concurrency),
                ],
            )
            for name, r in (("triton direct", direct), ("service hf", hf), ("service triton", fronting)):
                rows.append(
                    {
                        "mode": name,
                        "clients": clients,
                        "samples/s": r["samples_s"],
                        "p50 ms": r["p50_ms"],
                        "p99 ms": r["p99_ms"],
                        "mean batch": r["mean_batch"],
                        "vs direct": r["samples_s"] / direct["samples_s"] if direct["samples_s"] else float("nan"),
                    }
                )
    print_table(rows)


if __name__ == "__main__":
    main()
