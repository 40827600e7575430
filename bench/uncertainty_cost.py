"""What uncertainty costs: the scalar reward service against uncertainty services on the same backbone.

    .venv/bin/python bench/uncertainty_cost.py [--seconds 20] [--clients 1,32] [--threads 1] [--checkpoints 2,3]
                                               [--device cpu|cuda] [--dtype float32|bfloat16] [--json PATH]

Same load as bench/reward_service.py (N concurrent asyncio clients sending single-sample Score calls for a fixed
time, cache off), on the benchmark model of bench/common.py (Llama, hidden 256, 4 layers, ~3.4M parameters,
samples of 64-256 tokens):
  * scalar:          `serve reward` on the benchmark model (one output);
  * ensemble K=5:    `serve uncertainty` on the SAME backbone with a 5-row score layer (one forward pass for all
                     heads; target: p50 latency <= 1.15x the scalar service's);
  * checkpoints K=k: `serve uncertainty` on k separate copies of the model (k forward passes), for reference.
The services take turns for --repeats rounds; the medians of their p50/p99 latency and throughput are printed,
with each service's ratio to the scalar one at the same load. Last, the two kinds' Scorers are timed in this
process taking turns sample by sample (forward + post-processing, no gRPC): the ratio least moved by a busy machine. The
heads are untrained (serving cost does not depend on what the weights say); each model's OOD threshold is the
95th percentile of its std over the benchmark samples, so the flag is computed as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import BenchModel, print_table  # noqa: E402
from bench.reward_service import drive  # noqa: E402
from rewardline.services.process import ServiceProcess  # noqa: E402

ENSEMBLE_MEMBERS = 5


def _calibrated_on_samples(model_dir: Path, model: BenchModel, kind: str, members: int, member_dirs: list[str]) -> None:
    """Writes the spec, with the 95th percentile of std over the benchmark samples as the threshold."""
    from rewardline.services.uncertainty.model_format import Calibration, UncertaintySpec, write_spec
    from rewardline.trainer.reward_modeling.calibration import threshold_from
    from rewardline.trainer.reward_modeling.predict import Predictor

    placeholder = Calibration(percentile=95, threshold=0.0, n=1, data="placeholder")
    write_spec(model_dir, UncertaintySpec(kind=kind, members=members, member_dirs=member_dirs, calibration=placeholder))
    predictor = Predictor.from_dir(model_dir, "cpu", batch_size=32, max_length=4096)
    stds = predictor.predict_rows(model.token_ids).std
    calibration = threshold_from(stds, 95.0, "bench/common.py benchmark samples (cost measurement only)")
    write_spec(model_dir, UncertaintySpec(kind=kind, members=members, member_dirs=member_dirs, calibration=calibration))


def ensemble_model(model: BenchModel, cache: Path, members: int) -> Path:
    """The benchmark backbone with a `members`-row score layer (seeded random heads) and its spec."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = cache / f"reward-3m-ensemble{members}"
    if (path / "rewardline_uncertainty.json").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    scalar = AutoModelForSequenceClassification.from_pretrained(model.path)
    config = scalar.config
    config.num_labels = members
    config.id2label = {i: f"member{i}.score" for i in range(members)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    wide = AutoModelForSequenceClassification.from_config(config)
    wide.model.load_state_dict(scalar.model.state_dict())
    torch.manual_seed(0)
    torch.nn.init.normal_(wide.score.weight, std=0.02)
    wide.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    _calibrated_on_samples(path, model, "ensemble", members, [])
    return path


def checkpoint_model(model: BenchModel, cache: Path, members: int) -> Path:
    """`members` copies of the benchmark model, each with its own seeded score head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = cache / f"reward-3m-checkpoints{members}"
    if (path / "rewardline_uncertainty.json").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    member_dirs = [f"members/{i}" for i in range(members)]
    for i, d in enumerate(member_dirs):
        member = AutoModelForSequenceClassification.from_pretrained(model.path)
        torch.manual_seed(i)
        torch.nn.init.normal_(member.score.weight, std=0.02)
        member.save_pretrained(path / d)
        model.tokenizer.save_pretrained(path / d)
    _calibrated_on_samples(path, model, "checkpoint_ensemble", members, member_dirs)
    return path


def served(
    kind: str,
    path: Path,
    model: BenchModel,
    clients: int,
    seconds: float,
    threads: int,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    args = ["--model", str(path), "--num-threads", str(threads), "--cache-size", "0", "--device", device]
    args += ["--dtype", dtype]
    with ServiceProcess(kind, args, threads=threads) as svc:
        return asyncio.run(drive(svc.target, model.samples, clients, seconds, warmup=2.0))


def interleaved_scorers(
    model: BenchModel, ensemble: Path, samples: int, device: str = "cpu", dtype: str = "float32"
) -> dict:
    """The scalar and the ensemble kinds' own Scorers in this process, taking turns on the same single samples:
    forward pass plus post-processing, with no gRPC or scheduling noise, and any slow spell shared by both."""
    from rewardline.services.config import ServeConfig
    from rewardline.services.reward.scorer import RewardScorer
    from rewardline.services.uncertainty.scorer import UncertaintyScorer

    scalar = RewardScorer.load(ServeConfig(kind="reward", model=model.path, device=device, dtype=dtype))
    uncertain = UncertaintyScorer.load(ServeConfig(kind="uncertainty", model=ensemble, device=device, dtype=dtype))
    inputs = scalar.render(model.samples[:samples])
    times: dict[str, list[float]] = {"scalar": [], "ensemble": []}

    async def run() -> None:
        for x in inputs:
            for name, scorer in (("scalar", scalar), ("ensemble", uncertain)):
                started = time.perf_counter()
                await scorer.score_batch([x])  # type: ignore[list-item]
                times[name].append(time.perf_counter() - started)
        await scalar.close()
        await uncertain.close()

    asyncio.run(run())
    p50 = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {
        "scalar p50 ms": p50["scalar"],
        "ensemble p50 ms": p50["ensemble"],
        "ratio": p50["ensemble"] / p50["scalar"],
        "mean ratio": sum(times["ensemble"]) / sum(times["scalar"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="1,32")
    parser.add_argument(
        "--checkpoints", default="2,3", help="member counts of the separate-checkpoint ensembles ('' for none)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of turns; medians are reported")
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")), help="torch threads of every service"
    )
    parser.add_argument("--device", default="cpu", help="where every service and the in-process scorers run")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--interleaved-samples", type=int, default=0, help="samples of the in-process part (0: all)")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()
    on = {"device": args.device, "dtype": args.dtype}
    import torch

    torch.set_num_threads(args.threads)
    cache = REPO / ".cache" / "bench"
    model = BenchModel.load_or_build(cache)
    runs = [
        ("scalar", "reward", model.path),
        (f"ensemble K={ENSEMBLE_MEMBERS}", "uncertainty", ensemble_model(model, cache, ENSEMBLE_MEMBERS)),
    ]
    runs += [
        (f"checkpoints K={k}", "uncertainty", checkpoint_model(model, cache, int(k)))
        for k in args.checkpoints.split(",")
        if k
    ]
    print(
        f"model: {model.parameters / 1e6:.2f}M parameters, samples {model.min_len}-{model.max_len} tokens "
        f"(mean {model.mean_len:.0f}), {args.device} {args.dtype}, "
        f"torch threads {args.threads}, {args.seconds:.0f}s per run"
    )
    rows = []
    for clients in (int(c) for c in args.clients.split(",")):
        # services take turns, `repeats` rounds, medians per service: a slow spell of a shared machine then
        # lands on every service instead of on whichever ran during it
        rounds = [
            [served(kind, path, model, clients, args.seconds, args.threads, **on) for _, kind, path in runs]
            for _ in range(args.repeats)
        ]
        results = [
            {key: statistics.median(r[i][key] for r in rounds) for key in rounds[0][i]} for i in range(len(runs))
        ]
        scalar = results[0]
        for (name, _, _), result in zip(runs, results):
            rows.append(
                {
                    "clients": clients,
                    "service": name,
                    "served/s": result["samples_s"],
                    "p50 ms": result["p50_ms"],
                    "p99 ms": result["p99_ms"],
                    "p50 / scalar": result["p50_ms"] / scalar["p50_ms"],
                    "p99 / scalar": result["p99_ms"] / scalar["p99_ms"],
                    "throughput / scalar": result["samples_s"] / scalar["samples_s"],
                }
            )
    print_table(rows)
    ensemble = [r for r in rows if r["service"].startswith("ensemble")]
    worst = max(r["p50 / scalar"] for r in ensemble)
    print(f"shared-backbone ensemble of {ENSEMBLE_MEMBERS}: worst served p50 ratio {worst:.3f} (target <= 1.15)")
    samples = args.interleaved_samples or len(model.samples)
    print(f"\nin-process, interleaved, batch 1 ({samples} samples each): scalar Scorer vs ensemble Scorer")
    interleaved = interleaved_scorers(model, runs[1][2], samples, **on)
    print_table([interleaved])
    if args.json:
        report = {"device": args.device, "dtype": args.dtype, "rows": rows, "worst_p50_ratio": worst}
        args.json.write_text(json.dumps(report | {"interleaved": interleaved}, indent=2) + "\n")


if __name__ == "__main__":
    main()
