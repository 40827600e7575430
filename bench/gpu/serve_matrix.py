"""The reward service on one device across models, dtypes and client counts, and bf16-vs-fp32 score agreement.

    python3 bench/gpu/serve_matrix.py --out DIR [--device cuda] [--models anchor,large] [--dtypes bfloat16,float32]
                                      [--clients 1,32,128] [--seconds 3] [--warmup 1]

bench/reward_service.py's own loops, arranged for a GPU minute budget: every service of the matrix (per model and
dtype, one that batches and one limited to one sample per forward, the "one forward per request" server) starts
at once, so their imports and model loads overlap, and each is then driven at every client count in turn by
``reward_service.drive`` (N concurrent asyncio clients, single-sample Score calls, cache off). Beside each row:

- in-process best: ``reward_service.in_process`` (the backend's own forward, batches composed like the
  batcher's) at batch sizes 1, 8, 32 and 128, the best one not larger than the client count: the most this
  device gets from the model without serving;
- one forward per request: the served figure of the batch-1 server, and the in-process batch-1 rate.

The aims (issue 14): at 32 clients on the large model, served >= 0.9x in-process best and >= 2x one forward per
request; printed as met or missed for each dtype.

Agreement: the pool's 512 samples scored by the backend in bfloat16 and in float32 on the device (and float32 on
the CPU, the reference the tests use): max and mean |difference|, the same relative to the spread of the scores,
rank correlation, and the fraction of sample pairs ordered alike; on the trained local reward model also the
fraction of held-out preference pairs (chosen vs rejected) whose verdict is the same in both dtypes: what a user
can be promised.

Writes DIR/reward_service.json (every figure) and prints the tables (run_all.sh keeps them in a .txt beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.common import BenchModel, print_table  # noqa: E402
from bench.reward_service import drive, in_process  # noqa: E402
from rewardline.services.errors import ServiceError  # noqa: E402
from rewardline.services.metrics import sample_value, scrape  # noqa: E402
from rewardline.services.process import ServiceProcess, start_all  # noqa: E402

IN_PROCESS_BATCHES = (1, 8, 32, 128)
AIM_CLIENTS, AIM_MODEL = 32, "large"
AIM_VS_IN_PROCESS, AIM_VS_ONE_BY_ONE = 0.9, 2.0
SIDES = ("chosen", "rejected")
CPU_SAMPLES = 64  # the CPU's float32 reference of the agreement table: the first samples only (200M on a CPU is slow)


def service(model: BenchModel, device: str, dtype: str, extra: list[str], log: Path) -> ServiceProcess:
    args = ["--model", str(model.path), "--device", device, "--dtype", dtype, "--cache-size", "0", *extra]
    return ServiceProcess("reward", [*args, "--num-threads", "1"], threads=1, log_path=log)


def attempt(what: str, run: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """``run(*args, **kwargs)``, or its error: one failing service must not cost the run its other figures."""
    try:
        return run(*args, **kwargs)
    except Exception as e:  # recorded in the row and printed; the matrix goes on
        print(f"{what}: FAILED: {type(e).__name__}: {e}", flush=True)
        return {"error": f"{type(e).__name__}: {e}"}


def measure(
    name: str,
    model: BenchModel,
    dtype: str,
    services: dict[tuple[str, str, str], ServiceProcess],
    counts: list[int],
    args: argparse.Namespace,
) -> list[dict]:
    """One model in one dtype: the in-process rates, then each client count on both servers."""
    on = {"device": args.device, "dtype": dtype}
    best: dict[int, float] = {}
    b1: dict = {}
    for size in [b for b in IN_PROCESS_BATCHES if b <= max(counts)]:
        ip = attempt(
            f"in-process {name} {dtype} batch {size}",
            in_process,
            model,
            size,
            size,
            args.in_process_seconds,
            one_by_one=size == 1,
            **on,
        )
        if "error" not in ip:
            best[size] = ip["samples_s"]
            b1 = b1 or ip
    rows = []
    for clients in counts:
        row: dict = {"model": name, "dtype": dtype, "clients": clients}
        what = f"{name} {dtype} {clients} clients"
        s = attempt(what, driven, services[(name, dtype, "batched")], model, clients, args.seconds, args.warmup)
        if "error" in s:
            rows.append(row | s)
            continue
        row |= {"served/s": s["samples_s"], "p50 ms": s["p50_ms"], "p99 ms": s["p99_ms"], "mean batch": s["mean_batch"]}
        sizes = [b for b in best if b <= clients]
        if sizes:
            top = max(sizes, key=lambda b: best[b])
            row |= {
                "in-process best/s": best[top],
                "best batch": top,
                "served/in-process best": s["samples_s"] / best[top],
            }
        if b1:
            row |= {"in-process b1/s": b1["batch1_s"], "in-process b1 p50 ms": b1["batch1_p50_ms"]}
        if clients > 1:
            one = attempt(
                what + " (one by one)",
                driven,
                services[(name, dtype, "one_by_one")],
                model,
                clients,
                args.seconds,
                args.warmup,
            )
            if "error" in one:
                row["one-by-one error"] = one["error"]
            else:
                row |= {
                    "one-by-one/s": one["samples_s"],
                    "one-by-one p50 ms": one["p50_ms"],
                    "one-by-one p99 ms": one["p99_ms"],
                    "served/one-by-one": s["samples_s"] / one["samples_s"] if one["samples_s"] else float("inf"),
                }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def driven(svc: ServiceProcess, model: BenchModel, clients: int, seconds: float, warmup: float) -> dict:
    """``reward_service.drive`` plus the mean batch the server ran meanwhile (from its histogram)."""
    before = scrape(svc.metrics_port)
    result = asyncio.run(drive(svc.target, model.samples, clients, seconds, warmup=warmup))
    after = scrape(svc.metrics_port)
    batches = sample_value(after, "rewardline_batch_size_count") - sample_value(before, "rewardline_batch_size_count")
    batched = sample_value(after, "rewardline_batch_size_sum") - sample_value(before, "rewardline_batch_size_sum")
    result["mean_batch"] = batched / batches if batches else 0.0
    return result


def scores(
    model_dir: Path, tokenizer: PreTrainedTokenizerBase, ids: Sequence[Sequence[int]], device: str, dtype: str
) -> np.ndarray:
    """The first output of every row, in batches of 32 as they come (mixed lengths, padded)."""
    from rewardline.services.backends.hf import HFClassifier

    backend = HFClassifier(model_dir, tokenizer, device, dtype)
    out = [backend.forward(ids[i : i + 32])[:, 0] for i in range(0, len(ids), 32)]
    asyncio.run(backend.close())
    return np.concatenate(out).astype(np.float64)


def ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    diff = np.abs(other - reference)
    spread = float(reference.std())
    i, j = np.triu_indices(len(reference), k=1)
    same_order = np.sign(reference[i] - reference[j]) == np.sign(other[i] - other[j])
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "score_std": spread,
        "max_abs_over_std": float(diff.max() / spread) if spread else float("nan"),
        "spearman": float(np.corrcoef(ranks(reference), ranks(other))[0, 1]),
        "pairs_same_order": float(same_order.mean()),
    }


def preference_agreement(local_reward: Path, device: str) -> dict:
    """The trained local reward model on held-out preference pairs: verdicts (chosen > rejected) in bf16 vs fp32."""
    from rewardline.services.api import pb
    from rewardline.services.modeling import load_tokenizer
    from rewardline.services.rendering import InputRenderer

    pairs = [json.loads(line) for line in (local_reward.parent / "data" / "prefs_test.jsonl").open()]
    tokenizer = load_tokenizer(local_reward)
    flat = [pb.Sample(id=str(k), prompt=p["prompt"], response=p[side]) for k, p in enumerate(pairs) for side in SIDES]
    ids = []
    for rendered in InputRenderer(tokenizer, max_length=512).render(flat):
        if isinstance(rendered, ServiceError):
            raise ValueError(f"a held-out pair does not render: {rendered.message}")
        ids.append(rendered.token_ids)
    fp32 = scores(local_reward, tokenizer, ids, device, "float32").reshape(-1, 2)
    bf16 = scores(local_reward, tokenizer, ids, device, "bfloat16").reshape(-1, 2)
    verdict32, verdict16 = fp32[:, 0] > fp32[:, 1], bf16[:, 0] > bf16[:, 1]
    return {
        "pairs": len(pairs),
        "verdicts_agree": float((verdict32 == verdict16).mean()),
        "accuracy_float32": float(verdict32.mean()),
        "accuracy_bfloat16": float(verdict16.mean()),
        **{f"score_{k}": v for k, v in agreement(fp32.ravel(), bf16.ravel()).items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default="anchor,large")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--clients", default="1,32,128")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per client count")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    p.add_argument("--in-process-seconds", type=float, default=1.0, help="per in-process batch size")
    p.add_argument("--pool", type=int, default=0, help="use only the pool's first N samples (0: all 512)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    counts = [int(c) for c in args.clients.split(",")]
    models = {m: BenchModel.load_or_build(REPO / ".cache" / "bench", m) for m in args.models.split(",")}
    if args.pool:
        models = {
            n: dataclasses.replace(m, samples=m.samples[: args.pool], token_ids=m.token_ids[: args.pool])
            for n, m in models.items()
        }
    dtypes = args.dtypes.split(",")
    for name, m in models.items():
        print(f"model {name}: {m.parameters / 1e6:.1f}M parameters, samples {m.min_len}-{m.max_len} tokens", flush=True)

    started = time.perf_counter()
    services: dict[tuple[str, str, str], ServiceProcess] = {}
    for name, model in models.items():
        for dtype in dtypes:
            for variant, extra in (("batched", []), ("one_by_one", ["--max-batch-size", "1"])):
                log = args.out / "logs" / f"reward-{name}-{dtype}-{variant}.log"
                services[(name, dtype, variant)] = service(model, args.device, dtype, extra, log)
    start_all(services.values(), timeout=240)
    print(f"{len(services)} services up in {time.perf_counter() - started:.1f}s", flush=True)

    rows, aims = [], []
    try:
        for name, model in models.items():
            for dtype in dtypes:
                rows += measure(name, model, dtype, services, counts, args)
                row = next(
                    (r for r in rows if (r["model"], r["dtype"], r["clients"]) == (name, dtype, AIM_CLIENTS)), None
                )
                if name == AIM_MODEL and row is not None and "served/one-by-one" in row:
                    aims.append(
                        {
                            "dtype": dtype,
                            "served/in-process best": row["served/in-process best"],
                            f"aim >= {AIM_VS_IN_PROCESS}": row["served/in-process best"] >= AIM_VS_IN_PROCESS,
                            "served/one-by-one": row["served/one-by-one"],
                            f"aim >= {AIM_VS_ONE_BY_ONE}": row["served/one-by-one"] >= AIM_VS_ONE_BY_ONE,
                        }
                    )
    finally:
        for svc in services.values():
            svc.stop()
            svc.kill()

    agreements = []
    for name, model in models.items():
        pool = model.token_ids
        fp32 = scores(model.path, model.tokenizer, pool, args.device, "float32")
        bf16 = scores(model.path, model.tokenizer, pool, args.device, "bfloat16")
        agreements.append({"model": name, "compared": "bf16 vs fp32", **agreement(fp32, bf16)})
        if args.device != "cpu":  # the CPU's float32 (the tests' reference) on the first samples: it is slow there
            cpu = scores(model.path, model.tokenizer, pool[:CPU_SAMPLES], "cpu", "float32")
            agreements.append({"model": name, "compared": "fp32 vs cpu fp32", **agreement(cpu, fp32[:CPU_SAMPLES])})
    local = REPO / ".cache" / "models" / "reward"
    preference = preference_agreement(local, args.device)

    print(f"\nreward service on {args.device}: {args.seconds:.0f}s per client count after {args.warmup:.0f}s warm-up")
    print_table(rows)
    print(f"\naims at {AIM_CLIENTS} clients on the {AIM_MODEL} model:")
    print_table(aims or [{"aims": f"not measured (no {AIM_MODEL} model at {AIM_CLIENTS} clients in this run)"}])
    print(f"\nscore agreement over {len(pool)} samples of the pool, on {args.device}:")
    print_table(agreements)
    print("\ntrained local reward model, held-out preference pairs, bfloat16 vs float32:")
    print_table([preference])
    report = {
        "device": args.device,
        "settings": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "aims": aims,
        "agreement": agreements,
        "preference_agreement": preference,
    }
    (args.out / "reward_service.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
