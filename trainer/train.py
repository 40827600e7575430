"""``rewardline train``: the online training daemon.

Sets up once — process group, policy, reference, optimizer, rollout engine and the rollout pipeline that feeds
it prompts (synchronous, or asynchronous with bounded staleness), reward sources, metrics, control API, signal
handlers, and the checkpoint to resume from — then takes steps (trainer.step) until the configured number, or
forever as a daemon. Between steps it acts on the control API (pause, checkpoint), checkpoints
every N steps, and on SIGTERM/SIGINT it finishes or abandons the current step, writes a checkpoint and exits 0;
``--resume`` continues from the latest checkpoint with the same step count and data order.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, get_scheduler

from rewardline.services.config_loading import ConfigError, dump_config
from rewardline.services.modeling import load_tokenizer
from rewardline.trainer import checkpoint, distributed
from rewardline.trainer.config import TrainConfig, config_hash
from rewardline.trainer.control import Control, ControlServer
from rewardline.trainer.observability import TrainerMetrics
from rewardline.trainer.policy import (
    DTYPES,
    PolicyModel,
    PolicyModule,
    base_model,
    load_policy,
    load_reference,
    policy_weights,
)
from rewardline.trainer.prompts import Cursor, NoMorePrompts, PromptStream
from rewardline.trainer.rewards import make_source
from rewardline.trainer.rewards.combine import RunningMoments
from rewardline.trainer.rewards.hub import RewardHub, RewardWaitTimeout, WaitInterrupted
from rewardline.trainer.rewards.python_source import import_function
from rewardline.trainer.rollout.base import RolloutEngine
from rewardline.trainer.rollout.pipeline import RolloutPipeline, merge_ranks
from rewardline.trainer.run_log import MetricsLog, write_plots
from rewardline.trainer.step import StepContext, run_step
from rewardline.v1 import trainer_pb2 as tpb

log = logging.getLogger(__name__)
PAUSE_POLL_S = 0.2


def preflight(config: TrainConfig) -> None:
    """What the config names must exist: fail at start with the field's name, not mid-way with a traceback."""
    problems = []
    if not (config.policy.path / "config.json").is_file():
        problems.append(f"policy.path: {config.policy.path} is not a Hugging Face model directory (no config.json)")
    for i, path in enumerate(config.data.train):
        if not Path(path).is_file():
            problems.append(f"data.train.{i}: no such file: {path}")
    if config.data.watch_dir is not None and config.data.watch_dir.exists() and not config.data.watch_dir.is_dir():
        problems.append(f"data.watch_dir: {config.data.watch_dir} is not a directory")
    for i, source in enumerate(config.rewards.sources):
        if source.type == "python":
            try:
                import_function(source.function)
            except ValueError as e:
                problems.append(f"rewards.sources.{i} ({source.name}): {e}")
    if problems:
        raise ConfigError("cannot start:\n  " + "\n  ".join(problems))


def make_engine(config: TrainConfig, module: PolicyModule, tokenizer) -> RolloutEngine:
    if config.rollout.engine == "vllm":
        from rewardline.trainer.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(config.policy.path, tokenizer, config.rollout, config.policy.dtype, config.seed)
    from rewardline.trainer.rollout.hf_engine import HFEngine

    # Sampling from the training module itself needs no weight copy, but FSDP's sharded module cannot generate rank
    # by rank, and in asynchronous mode the module trains while the engine samples: then the engine has its own.
    if distributed.is_sharded(module) or config.rollout.max_staleness:
        copy: PolicyModel = AutoModelForCausalLM.from_pretrained(config.policy.path, dtype=DTYPES[config.policy.dtype])
        copy.to(next(module.parameters()).device)
        return HFEngine(copy.eval(), tokenizer, config.rollout, owns_model=True)
    return HFEngine(module.policy, tokenizer, config.rollout)


def make_optimizer(
    config: TrainConfig, module: PolicyModule
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    o = config.optim
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    total = config.steps or 10**9
    scheduler = get_scheduler(
        o.schedule if o.schedule != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=o.warmup_steps,
        num_training_steps=total,
    )
    return optimizer, scheduler


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.resume = resume
        self.stop_signal: str | None = None
        self.hash = config_hash(config)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_signal = signal.Signals(signum).name
        log.warning(f"{self.stop_signal} received: checkpointing and stopping at the next safe point")

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)

    def setup(self) -> None:
        c = self.config
        preflight(c)
        self.device = distributed.training_device(c.policy.device)
        self.world = distributed.init(c.distributed.backend, self.device)
        if c.threads:
            torch.set_num_threads(c.threads)
        random.seed(c.seed)
        np.random.seed(c.seed)
        torch.manual_seed(c.seed)
        self.run_dir = c.run_dir
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(c))
        self.tokenizer = load_tokenizer(c.policy.path)
        self.policy_module = load_policy(c).to(self.device)
        self.reference = load_reference(c)
        if self.reference is not None:
            self.reference.to(self.device)
        if c.rollout.prompts_per_step < self.world.size:
            raise ConfigError(
                f"rollout.prompts_per_step: {c.rollout.prompts_per_step} prompts cannot give each of the "
                f"{self.world.size} processes a group"
            )
        fsdp = self.world.distributed and c.distributed.strategy == "fsdp"
        self.strategy = c.distributed.strategy if self.world.distributed else "single"
        if fsdp:
            if c.rollout.prompts_per_step % self.world.size:
                raise ConfigError(
                    f"rollout.prompts_per_step: FSDP needs it divisible by the {self.world.size} processes "
                    "(every rank must run the same number of forwards)"
                )
            if c.algorithm.dynamic_sampling:
                raise ConfigError(
                    "algorithm.dynamic_sampling: not with distributed.strategy fsdp (the ranks would keep different "
                    "numbers of groups, and FSDP needs every rank to run the same forwards); use ddp"
                )
            distributed.shard(self.policy_module, list(base_model(self.policy_module.policy).get_decoder().layers))
        self.optimizer, self.scheduler = make_optimizer(c, self.policy_module)
        self.step, cursor = 0, Cursor()
        self.reward_moments = RunningMoments() if c.rewards.running_norm else None
        in_flight: list[dict] = []
        latest = checkpoint.latest(self.run_dir) if self.resume else None
        if self.resume and latest is None:
            log.warning(
                "--resume: no checkpoint in the run directory; starting from the beginning",
                extra={"run_dir": str(self.run_dir)},
            )
        if latest is not None:
            state = checkpoint.load(latest, self.policy_module, self.optimizer, self.scheduler)
            self.step, cursor, in_flight = state.step, state.cursor, state.rollouts
            if self.reward_moments is not None and state.reward_moments:
                self.reward_moments = RunningMoments(**state.reward_moments)
            if state.config_hash != self.hash:
                log.warning(
                    "resuming with a configuration that differs from the checkpoint's",
                    extra={"checkpoint_hash": state.config_hash, "config_hash": self.hash},
                )
            log.warning(f"resumed from {latest} at step {self.step}", extra={"step": self.step, "path": str(latest)})
        self.module: torch.nn.Module = self.policy_module
        if self.world.distributed and not fsdp:
            self.module = torch.nn.parallel.DistributedDataParallel(
                self.policy_module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.data = PromptStream(c.data, cursor, should_stop=lambda: self.stop_signal is not None)
        self.metrics = TrainerMetrics()
        self.engine = make_engine(c, self.policy_module, self.tokenizer)
        if latest is not None or fsdp:
            self.engine.load_weights(policy_weights(self.policy_module))
        self.hub = RewardHub([make_source(s) for s in c.rewards.sources], self.metrics)
        self.hub.start()
        # resume: the checkpoint's in-flight rollouts first, then new ones from the data cursor after them
        self.rollouts = RolloutPipeline(c, self.world, self.tokenizer, self.engine, self.hub, self.data)
        self.rollouts.start(self.step, in_flight)
        self.control = Control(
            str(self.run_dir), self.hash, c.algorithm.name, self.world.size, c.steps, lambda: self.hub.waiting_for
        )
        self.control_server: ControlServer | None = None
        self.metrics_port: int | None = None
        if self.world.is_main:
            self.log = MetricsLog(self.run_dir, resume_step=self.step if latest is not None else None)
            if c.observability.metrics_port is not None:
                self.metrics_port = self.metrics.serve(c.observability.metrics_port, c.observability.metrics_host)
            if c.control.port is not None:
                self.control_server = ControlServer(self.control, c.control, self.metrics.auth_outcome).start()
                log.warning(
                    f"control API on {c.control.host}:{self.control_server.port}",
                    extra={"port": self.control_server.port},
                )
        self.metrics.step.set(self.step)
        self.control.stepped(self.step, float("nan"), float("nan"))
        self.checkpointed_step = self.step if latest is not None else -1
        self.last_record: float | None = None

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        self.setup()
        try:
            return self.loop()
        finally:
            self.close()

    def _flags(self) -> tuple[bool, bool, bool]:
        """(stop, pause, checkpoint) as rank 0 sees them, agreed by every rank."""
        mine = [
            float(self.stop_signal is not None),
            float(self.control.pause_requested),
            float(bool(self.control.checkpoints)),
        ]
        stop, pause, ckpt = distributed.all_reduce_max(mine, self.world)
        return bool(stop), bool(pause), bool(ckpt)

    def loop(self) -> int:
        c = self.config
        progress = tqdm(
            total=c.steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (c.observability.progress and self.world.is_main),
        )
        self.control.set_state(tpb.TRAINER_STATE_RUNNING)
        try:
            while c.steps is None or self.step < c.steps:
                stop, pause, ckpt = self._flags()
                if ckpt:
                    self._checkpoint()
                if stop:
                    break
                if pause:
                    self._paused()
                    continue
                ctx = self._context()
                try:
                    figures, records = run_step(ctx, self.step + 1)
                except NoMorePrompts as e:
                    log.warning(f"no more prompts: {e}")
                    break
                except WaitInterrupted:
                    break  # the checkpoint keeps the abandoned step's rollouts (or its prompts, to sample again)
                except RewardWaitTimeout as e:
                    log.error(f"giving up: {e}")
                    self._checkpoint()
                    return 1
                self.step += 1
                self._record(figures, records, progress)
                if c.checkpoint.every and self.step % c.checkpoint.every == 0:
                    self._checkpoint()
            self.control.set_state(tpb.TRAINER_STATE_STOPPING)
            if self.checkpointed_step != self.step:
                self._checkpoint()
            if self.world.is_main and self.log.history:
                write_plots(self.log.history, self.run_dir)
        finally:
            progress.close()
        return 0

    def _context(self) -> StepContext:
        return StepContext(
            self.config,
            self.world,
            self.tokenizer,
            self.module,
            self.policy_module,
            self.reference,
            self.optimizer,
            self.scheduler,
            self.rollouts,
            self.hub,
            # Under DDP a step is never abandoned half-way (the ranks would disagree about it): stop at its end.
            should_stop=(lambda: self.stop_signal is not None) if not self.world.distributed else (lambda: False),
            device=self.device,
            reward_moments=self.reward_moments,
        )

    def _paused(self) -> None:
        self.control.set_state(tpb.TRAINER_STATE_PAUSED)
        self.metrics.paused.set(1)
        log.warning("paused", extra={"step": self.step})
        while True:
            time.sleep(PAUSE_POLL_S)
            stop, pause, ckpt = self._flags()
            if ckpt:
                self._checkpoint()
            if stop or not pause:
                break
        self.metrics.paused.set(0)
        self.control.set_state(tpb.TRAINER_STATE_RUNNING)
        log.warning("resumed", extra={"step": self.step})

    def _record(self, figures: dict[str, float], records, progress: tqdm) -> None:
        now = time.perf_counter()  # wall clock per step, the loop's own work (records, plots, checkpoints) included
        figures["wall_s"] = figures["step_s"] if self.last_record is None else now - self.last_record
        self.last_record = now
        m = self.metrics
        m.step.set(self.step)
        for key, gauge in (
            ("reward", m.reward),
            ("kl", m.kl),
            ("entropy", m.entropy),
            ("clip_fraction", m.clip_fraction),
            ("advantage_mean", m.advantage_mean),
            ("advantage_std", m.advantage_std),
            ("loss", m.loss),
            ("tokens_per_s", m.tokens_per_second),
        ):
            if math.isfinite(figures[key]):
                gauge.set(figures[key])
        for source in self.config.rewards.sources:
            value = figures.get(f"reward/{source.name}", float("nan"))
            if math.isfinite(value):
                m.source_reward.labels(source.name).set(value)
        m.step_seconds.observe(figures["step_s"])
        m.samples.inc(figures["samples"])
        m.generated_tokens.inc(figures["completion_tokens"])
        self.control.stepped(self.step, figures["reward"], figures["kl"])
        if not self.world.is_main:
            return
        record = {
            **{k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in figures.items()},
            "step": self.step,
            "epoch": self.data.cursor.epoch,
            "prompts": [r.origin for r in records],
            "time": time.time(),
        }
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.log.append(record)
        progress.update(1)
        shown = {"reward": f"{figures['reward']:.3f}"}
        if math.isfinite(figures["kl"]):  # no reference model (β = 0): no KL
            shown["kl"] = f"{figures['kl']:.4f}"
        progress.set_postfix(shown, refresh=False)
        every = self.config.observability.plot_every
        if every and self.step % every == 0:
            write_plots(self.log.history, self.run_dir)

    def _checkpoint(self) -> None:
        requests = self.control.take_checkpoint_requests()
        # gathered on every rank (collectives under FSDP), written by rank 0
        sharded = distributed.is_sharded(self.policy_module)
        module_state = distributed.full_state_dict(self.policy_module) if sharded else None
        optimizer_state = distributed.full_optimizer_state(self.policy_module, self.optimizer)
        in_flight, cursor = self.rollouts.snapshot(self.step)
        if self.world.distributed:  # each rank holds its own share of the in-flight samples
            shares: list = [None] * self.world.size
            torch.distributed.all_gather_object(shares, in_flight)
            in_flight = merge_ranks(shares)
        if self.world.is_main:
            previous = self.control.state
            self.control.set_state(tpb.TRAINER_STATE_STOPPING if self.stop_signal else previous)
            path = checkpoint.save(
                self.run_dir,
                self.policy_module,
                self.tokenizer,
                optimizer_state,
                self.scheduler,
                checkpoint.TrainingState(
                    self.step,
                    cursor,
                    self.hash,
                    self.world.size,
                    self.strategy,
                    rollouts=in_flight,
                    reward_moments=self.reward_moments.state_dict() if self.reward_moments else None,
                ),
                self.config.checkpoint.keep,
                module_state=module_state,
            )
            self.control.checkpointed(self.step, str(path), requests)
        self.checkpointed_step = self.step
        if self.world.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        for name, action in (
            ("control API", lambda: self.control_server.stop() if self.control_server else None),
            ("rollout thread", lambda: self.rollouts.close()),
            ("reward sources", lambda: self.hub.close()),
            ("rollout engine", lambda: self.engine.close()),
        ):
            try:
                action()
            except AttributeError:
                pass  # setup did not get that far
            except Exception:
                log.exception(f"closing the {name} failed")
        distributed.shutdown()


def train(config: TrainConfig, resume: bool = False) -> int:
    return Trainer(config, resume).run()
