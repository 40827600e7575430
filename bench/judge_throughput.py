"""Judge throughput in verdict mode: transformers in-process and vLLM, each with prefix sharing on and off.

    .venv/bin/python bench/judge_throughput.py [--seconds 20] [--clients 4] [--group-size 8] [--model bench|local]
                                               [--backends hf,vllm] [--device cpu|cuda] [--dtype float32|bfloat16]

The workload is GRPO's: groups of ``--group-size`` responses to one prompt, each group sent as one Score request by
one of ``--clients`` concurrent clients. Every group has a new prompt and every response is new (a counter is
written into both), so nothing repeats across groups and the service's score cache and vLLM's prefix cache can
only share what a real trainer's traffic shares: the template's head and the prompt within a group. Printed per
configuration: samples/s, p50/p99 latency of a group, mean prompt length, and the speed-up over hf without sharing.
"Prefix caching" is vLLM's prefix cache on vLLM (32-token blocks on CPU) and, on hf, the service's computing of
the head a batch's samples share once (``--judge-hf-share-prefixes``).

Models: ``bench`` (default), an untrained Llama causal LM of the benchmark reward model's size (hidden 256, 4
layers, 8 heads of 32, ~1000-token vocabulary; built once into .cache/bench/judge-3m), so that the forward pass
dominates; ``local``, the tiny trained judge of `rewardline models build`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import percentile_ms, print_table  # noqa: E402
from rewardline.services.client import AsyncRewardClient  # noqa: E402
from rewardline.services.process import ServiceProcess  # noqa: E402


def bench_judge(cache: Path) -> Path:
    """The untrained benchmark-size causal LM, built once from the local tokenizer."""
    from transformers import AutoTokenizer

    from rewardline.trainer.local_models.architectures import BENCHMARK, causal_lm, save_model
    from rewardline.trainer.local_models.build import ensure_models

    path = cache / "judge-3m"
    if not (path / "model.safetensors").exists():
        tokenizer = AutoTokenizer.from_pretrained(ensure_models(cache.parent / "models") / "policy")
        save_model(causal_lm(BENCHMARK, tokenizer, seed=0), tokenizer, path)
    return path


class GroupMaker:
    """Fresh GRPO groups: a new question (a paragraph and a sum) and new responses of mixed length each time."""

    def __init__(self, group_size: int, seed: int = 0) -> None:
        from rewardline.trainer.local_models.generic_text import paragraph

        self.paragraph = paragraph
        self.rng = random.Random(seed)
        self.group_size = group_size
        self.counter = itertools.count()

    def group(self) -> list[dict]:
        n = next(self.counter)
        a, b = self.rng.randrange(100), self.rng.randrange(100)
        question = f"{self.paragraph(self.rng, sentences=3)} Question {n}: what is {a} + {b}?"
        out = []
        for i in range(self.group_size):
            answer = a + b + self.rng.choice([0, 0, 1, -1, 10])
            tail = self.paragraph(self.rng, sentences=self.rng.randint(0, 2))
            out.append(
                {"id": f"g{n}-{i}", "prompt": question, "response": f"{tail} The answer is {answer}. ({n}.{i})".strip()}
            )
        return out


async def drive(target: str, maker: GroupMaker, clients: int, seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    samples = 0
    tokens: list[int] = []
    start = time.monotonic() + warmup
    stop = start + seconds

    async with AsyncRewardClient(target, timeout=300) as client:

        async def one() -> None:
            nonlocal samples
            while True:
                group = maker.group()
                t0 = time.monotonic()
                if t0 >= stop:
                    return
                rewards = await client.score(group)
                t1 = time.monotonic()
                if t0 >= start and t1 <= stop:
                    latencies.append(t1 - t0)
                    samples += len(rewards)
                    tokens.extend(r.num_tokens for r in rewards)

        await asyncio.gather(*(one() for _ in range(clients)))
    return {
        "samples/s": samples / seconds,
        "group p50 ms": percentile_ms(latencies, 50),
        "group p99 ms": percentile_ms(latencies, 99),
        "mean tokens": sum(tokens) / max(len(tokens), 1),
    }


def run(model: Path, backend: str, prefix_caching: bool, args: argparse.Namespace) -> dict:
    flags = [
        "--model",
        str(model),
        "--backend",
        backend,
        "--cache-size",
        "0",
        "--max-batch-size",
        "64",
        "--num-threads",
        str(args.threads),
    ]
    env = {"OMP_NUM_THREADS": str(args.threads)}
    if backend == "hf":
        flags += ["--judge-hf-share-prefixes" if prefix_caching else "--no-judge-hf-share-prefixes"]
        flags += ["--device", args.device, "--dtype", args.dtype]
    if backend == "vllm":
        flags += ["--vllm-prefix-caching" if prefix_caching else "--no-vllm-prefix-caching"]
        if args.bind != "auto":
            flags += ["--vllm-cpu-threads-bind", args.bind]
    with ServiceProcess("judge", flags, env=env, threads=args.threads) as svc:
        return asyncio.run(drive(svc.target, GroupMaker(args.group_size), args.clients, args.seconds, warmup=2.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--model", choices=("bench", "local"), default="bench")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("BENCH_THREADS", "2")),
        help="torch threads of the hf service (vLLM: see --bind)",
    )
    parser.add_argument(
        "--bind",
        default=os.environ.get("BENCH_VLLM_BIND", "0-1"),
        help="VLLM_CPU_OMP_THREADS_BIND of the vLLM services ('auto': vLLM's default)",
    )
    parser.add_argument("--backends", default="hf,vllm", help="engines to measure (a GPU machine without vLLM: hf)")
    parser.add_argument("--device", default="cpu", help="where the hf engine runs")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="hf engine")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    if args.model == "bench":
        model = bench_judge(REPO / ".cache" / "bench")
    else:
        from rewardline.trainer.local_models.build import ensure_models

        model = ensure_models(REPO / ".cache" / "models") / "judge"
    print(
        f"judge {model.name}, verdict mode, {args.clients} clients x groups of {args.group_size}, "
        f"{args.seconds:.0f}s per run, "
        f"hf on {args.device} in {args.dtype} with {args.threads} threads, vLLM threads bind {args.bind}"
    )
    rows = []
    for backend, caching in (("hf", False), ("hf", True), ("vllm", False), ("vllm", True)):
        if backend not in args.backends.split(","):
            continue
        result = run(model, backend, caching, args)
        rows.append({"backend": backend, "prefix caching": "on" if caching else "off", **result})
    for row in rows:
        row["vs hf off"] = row["samples/s"] / rows[0]["samples/s"]
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "dtype": args.dtype, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
