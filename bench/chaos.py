"""Fault injection: a short training against two replicas of each reward service, with replicas and the trainer
itself killed and restarted on a schedule (issue 12's fault-injection aim).

    .venv/bin/python bench/chaos.py [--steps 24] [--kinds reward,uncertainty] [--no-reference] [--keep DIR]

Every process is real: ``rewardline serve KIND`` replicas on loopback ports, the trainer as ``rewardline train``
(``--resume`` after each of its deaths), its gRPC sources pointed at both replicas of a kind
(``ipv4:127.0.0.1:A,127.0.0.1:B``, client-side round robin with health checking). The schedule fires on the steps
the trainer has logged: SIGKILL (a crash: nothing drains) and SIGTERM (a drain) of the replica that is scoring at
that moment, both replicas of a kind at once (an outage: training must wait, not drop samples), SIGKILL of the
trainer (it resumes from its last periodic checkpoint and redoes the steps after it) and SIGTERM of the trainer (it
abandons the step in progress and checkpoints the last whole one).

Reported, with the aim beside each figure:
  samples lost      samples of the final run's steps that some service did not score: from metrics.jsonl, per
                    step, samples short of prompts x n and ``errors/SOURCE`` (a sample left unanswered takes the
                    error score), plus any step missing. Aim 0. Faults are fired while samples are queued at a
                    replica (the services hold batches with --max-wait-ms so that they are), or after 30 s.
  scored twice      answers the trainer received for a sample it already had (its
                    rewardline_trainer_duplicate_rewards_total, scraped before each trainer death and through the
                    last life). Aim 0. A sample whose first answer died with a SIGKILLed replica is scored again by
                    the other one, but reaches the trainer once: the services' own counters show that re-done work.
  steps             the final metrics.jsonl has every step 1..N once; how many step executions that took (the
                    steps after a checkpoint are redone after a SIGKILL).
  data order        every step logged before a trainer death has the same prompts (file:line origins) after
                    ``--resume``; with the reference run (default), every step equals an uninterrupted run with the
                    same seed and no services (rewards do not choose the data).

tests/test_chaos.py runs a short schedule of the same engine as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from rewardline.services.metrics import sample_value, scrape  # noqa: E402
from rewardline.services.process import ServiceProcess, free_port  # noqa: E402

MODELS = REPO / ".cache" / "models"
Action = Literal["sigkill", "sigterm", "outage", "sigkill-trainer", "sigterm-trainer"]
POLL_S = 0.1
REPLICA_GRACE_S = 10.0  # a SIGTERMed replica's drain (--grace-period-s): short, so the schedule moves on
# Each batch is held this long for more samples (--max-wait-ms): scoring a step's samples takes milliseconds on
# these models, so without it a fault would almost never find samples in flight; with it, each step's samples wait
# in a queue that the schedule watches, and each fault is fired while some are there.
MAX_WAIT_MS = 250.0
IN_FLIGHT_WAIT_S = 30.0


@dataclass(frozen=True)
class Event:
    """One fault: fired once the trainer has logged ``at_step`` steps. ``kind``: the service whose busy replica (or,
    for an outage, both replicas) is hit; ``down_s``: how long a SIGKILLed replica stays down before it is started
    again (a SIGTERMed one is started again once it has drained and exited)."""

    at_step: int
    action: Action
    kind: str = ""
    down_s: float = 1.0

    def describe(self) -> str:
        return f"step {self.at_step}: {self.action}{' ' + self.kind if self.kind else ''}"


def full_schedule(kinds: Sequence[str]) -> list[Event]:
    """The benchmark's schedule (checkpoints every 2; its last fault due at step 19, so a run of 24 steps leaves room
    for the steps a fault takes to find samples in flight): every kind of fault, some at the same step."""
    a, b = kinds[0], kinds[-1]
    return [
        Event(2, "sigkill", a, down_s=2.0),
        Event(3, "sigterm", b),
        Event(5, "sigkill-trainer"),
        Event(8, "sigterm", a),
        Event(8, "sigkill", b, down_s=1.0),
        Event(10, "sigterm-trainer"),
        Event(13, "outage", a, down_s=3.0),
        Event(17, "sigkill-trainer"),
        Event(19, "sigkill", b, down_s=0.5),
        Event(19, "sigterm", a),
    ]


def short_schedule(kind: str) -> list[Event]:
    """tests/test_chaos.py's: one replica SIGKILLed, the trainer SIGKILLed and resumed while that replica loads
    again, then one replica SIGTERMed (the restarts overlap, to keep the test short)."""
    return [Event(1, "sigkill", kind, down_s=0.5), Event(3, "sigkill-trainer"), Event(4, "sigterm", kind)]


@dataclass
class Replica:
    service: ServiceProcess
    lives: int = 1
    scored: float = 0.0  # rewardline_samples_total (samples received) of its lives, as last scraped
    _scored_this_life: float = 0.0
    restart_at: float | None = None  # monotonic: start again then (SIGKILL); inf: once it has exited (SIGTERM)
    last_active: float = 0.0  # monotonic: when its counter last grew
    exits: list[int] = field(default_factory=list)  # exit codes of its ended lives (-9: SIGKILL; 0: drained)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> float:
        """Its samples counter now (summed over methods), kept for after it dies; the growth since the last look.
        Called from the schedule's thread and the watcher's."""
        try:
            snapshot = scrape(self.service.metrics_port)
        except OSError:
            return 0.0
        now = sum(v for (name, _), v in snapshot.items() if name == "rewardline_samples_total")
        with self._lock:
            grown = now - self._scored_this_life
            self.scored += max(grown, 0.0)
            if grown > 0:
                self.last_active = time.monotonic()
            self._scored_this_life = now
        return grown

    def died(self) -> None:
        with self._lock:
            self._scored_this_life = 0.0


@dataclass
class TrainerLife:
    resumed: bool
    started: float
    started_wall: float = field(default_factory=time.time)  # what metrics.jsonl's "time" is compared with
    resume_from: int = 0  # the checkpoint's step it started from
    exit_code: int | None = None
    duplicates: float = 0.0
    outages: float = 0.0
    reward_errors: float = 0.0
    steps_at_end: int = 0
    ended_by: str = "finished"


@dataclass
class ChaosReport:
    steps: int
    prompts_per_step: int
    n: int
    sources: list[str]
    final: list[dict[str, Any]]
    lives: list[TrainerLife]
    fired: list[str]
    order_checked: int  # steps logged before a trainer death compared with the same steps after --resume
    order_mismatches: list[int]
    reference_matched: int | None  # steps equal to the uninterrupted run's (None: no reference run)
    reference_mismatches: list[int]
    in_flight: int  # faults fired while samples were queued at a replica
    replica_lives: dict[str, int]
    replica_exits: dict[str, list[int]]
    service_scored: float  # samples the services received, all replicas and lives (as last scraped)
    seconds: float

    @property
    def steps_logged(self) -> list[int]:
        return [int(r["step"]) for r in self.final]

    @property
    def expected_samples(self) -> int:
        return self.steps * self.prompts_per_step * self.n

    def lost(self) -> dict[str, int]:
        """Per source: samples of the final steps it did not score (its errors/SOURCE: the sample took the error
        score, or none) plus samples missing from a step altogether, plus the steps missing from the run."""
        per_step = self.prompts_per_step * self.n
        missing = sum(per_step - int(r["samples"]) for r in self.final) + per_step * (self.steps - len(self.final))
        return {s: missing + sum(int(r[f"errors/{s}"]) for r in self.final) for s in self.sources}

    @property
    def duplicates(self) -> float:
        return sum(life.duplicates for life in self.lives)

    @property
    def executions(self) -> int:
        """Steps run over all the trainer's lives (a step redone after a SIGKILL counts again)."""
        return sum(max(life.steps_at_end - life.resume_from, 0) for life in self.lives)

    def lines(self) -> list[str]:
        lost = self.lost()
        trainer = Counter(life.ended_by for life in self.lives[:-1])
        ok_steps = self.steps_logged == list(range(1, self.steps + 1))
        out = [
            f"[chaos] {len(self.fired)} faults ({self.in_flight} with samples in flight) over {self.steps} steps "
            f"({self.prompts_per_step} prompts x {self.n} samples, sources {', '.join(self.sources)}; two replicas "
            f"each) in {self.seconds:.0f} s:",
            *[f"[chaos]   {f}" for f in self.fired],
            f"[chaos] steps completed: {len(self.final)} of {self.steps}, each once and in order: {ok_steps}, in "
            f"{self.executions} step executions; trainer lives {len(self.lives)} ({dict(trainer)}), exit codes "
            f"{[life.exit_code for life in self.lives]}; replica exit codes {self.replica_exits} (-9: SIGKILL, 0: "
            f"drained after SIGTERM)",
            f"[chaos] samples lost: {sum(lost.values())} of {self.expected_samples} x {len(self.sources)} "
            f"source(s) {lost} (aim 0); valid samples {sum(int(r['valid_samples']) for r in self.final)} of "
            f"{self.expected_samples}",
            f"[chaos] scored twice (duplicate answers reaching the trainer): {self.duplicates:.0f} (aim 0); "
            f"outages the trainer waited through: {sum(life.outages for life in self.lives):.0f} (counting its start, "
            "when the services may still be loading); "
            f"reward errors: {sum(life.reward_errors for life in self.lives):.0f}",
            f"[chaos] the services received {self.service_scored:.0f} samples for the "
            f"{self.expected_samples * len(self.sources)} the final run needed (steps redone after trainer kills, "
            f"and samples that died with a SIGKILLed replica, are sent again; counters as last scraped)",
            f"[chaos] data order: {self.order_checked} steps logged before a trainer death compared after --resume, "
            f"{len(self.order_mismatches)} differ {self.order_mismatches or ''}(aim 0)",
        ]
        if self.reference_matched is not None:
            out.append(
                f"[chaos] data order vs an uninterrupted run (same seed, no services): {self.reference_matched} of "
                f"{len(self.final)} steps equal, differing: {self.reference_mismatches or 'none'} (aim all equal)"
            )
        return out


def history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


def train_config(
    models: Path,
    run_dir: Path,
    targets: dict[str, str],
    steps: int,
    prompts_per_step: int,
    n: int,
    seed: int,
    control_port: int | None = None,
    metrics_port: int | None = None,
) -> dict[str, Any]:
    """A short GRPO run on the local models: one gRPC source per kind (both replicas in its target), waiting
    through outages (no error_score, no max_wait_s), a checkpoint every two steps. No targets: the exact-answer
    Python reward alone (the reference run)."""
    sources: list[dict[str, Any]] = [
        {"name": kind, "type": "grpc", "target": target, "reconnect_max_backoff_s": 0.5, "max_samples_per_request": 4}
        for kind, target in targets.items()
    ]
    if not sources:
        sources = [
            {"name": "exact", "type": "python", "function": "rewardline.trainer.rewards.verifiable:exact_answer"}
        ]
    config: dict[str, Any] = {
        "run_dir": str(run_dir),
        "steps": steps,
        "seed": seed,
        "threads": 1,
        "policy": {"path": str(models / "policy")},
        "data": {"train": [str(models / "data" / "prompts_train.jsonl")]},
        "rollout": {"engine": "hf", "n": n, "prompts_per_step": prompts_per_step, "max_new_tokens": 8},
        "rewards": {"sources": sources},
        "algorithm": {"name": "grpo", "kl_coef": 0.04},
        "checkpoint": {"every": 2, "keep": 2},
        "observability": {"progress": False, "plot_every": 0},
    }
    if metrics_port is not None:
        config["observability"]["metrics_port"] = metrics_port
    if control_port is not None:
        config["control"] = {"port": control_port}
    return config


class Chaos:
    """The services, the trainer and the schedule; ``run`` returns the report. Every process it starts is stopped
    when it returns or fails."""

    def __init__(
        self,
        work: Path,
        models: Path = MODELS,
        kinds: Sequence[str] = ("reward", "uncertainty"),
        steps: int = 24,
        schedule: Sequence[Event] | None = None,
        prompts_per_step: int = 2,
        n: int = 4,
        seed: int = 7,
        reference: bool = True,
        timeout_s: float = 1800.0,
        log: bool = True,
    ) -> None:
        self.work, self.models, self.kinds, self.steps = work, models, list(kinds), steps
        self.schedule = sorted(schedule if schedule is not None else full_schedule(self.kinds), key=lambda e: e.at_step)
        self.prompts_per_step, self.n, self.seed = prompts_per_step, n, seed
        self.reference, self.timeout_s, self.log = reference, timeout_s, log
        self.run_dir = work / "run"
        self.replicas: dict[str, list[Replica]] = {}
        self.trainer: subprocess.Popen | None = None
        self.lives: list[TrainerLife] = []
        self.metrics_port, self.control_port = free_port(), free_port()
        self.seen: dict[int, list[str]] = {}  # step -> prompts, as logged before a trainer death
        self.fired: list[str] = []
        self.in_flight = 0  # faults fired with samples queued at a replica
        self.deadline = 0.0
        self.watching = threading.Event()

    def watch(self) -> None:
        """Every half second, off the main loop (a loading replica can take seconds to answer /metrics, and the
        schedule must see each step as it is logged): the trainer's counters and each live replica's."""
        self.watching.set()
        while self.watching.is_set():
            self.scrape_trainer()
            for replica in self.alive(self.kinds):
                replica.refresh()
            time.sleep(0.5)

    def say(self, message: str) -> None:
        if self.log:
            print(f"[chaos] {time.strftime('%H:%M:%S')} {message}", flush=True)

    # --- processes -------------------------------------------------------------------------------------------
    def service_args(self, kind: str) -> list[str]:
        return [
            "--model",
            str(self.models / kind),
            "--max-length",
            "256",
            "--grace-period-s",
            str(REPLICA_GRACE_S),
            "--max-wait-ms",
            str(MAX_WAIT_MS),
        ]

    def spawn_services(self) -> None:
        """Every replica started, not waited for (``wait_services``): the trainer loads meanwhile."""
        for kind in self.kinds:
            self.replicas[kind] = []
            for i in range(2):
                service = ServiceProcess(kind, self.service_args(kind), log_path=self.work / f"{kind}-{i}.log")
                service.spawn()  # on this (the main) thread: each replica dies with this process
                self.replicas[kind].append(Replica(service))

    def wait_services(self) -> None:
        with ThreadPoolExecutor(len(self.kinds) * 2) as pool:
            for done in [pool.submit(r.service.wait_ready, 600) for rs in self.replicas.values() for r in rs]:
                done.result()

    def target(self, kind: str) -> str:
        a, b = (r.service.port for r in self.replicas[kind])
        return f"ipv4:127.0.0.1:{a},127.0.0.1:{b}"

    def start_trainer(self, resume: bool) -> None:
        config_path = self.work / "train.yaml"
        if not config_path.exists():
            targets = {kind: self.target(kind) for kind in self.kinds}
            config = train_config(
                self.models,
                self.run_dir,
                targets,
                self.steps,
                self.prompts_per_step,
                self.n,
                self.seed,
                control_port=self.control_port,
                metrics_port=self.metrics_port,
            )
            config_path.write_text(yaml.safe_dump(config))
        log = open(self.work / f"trainer-{len(self.lives)}.log", "ab")
        self.trainer = subprocess.Popen(
            [sys.executable, "-m", "rewardline.trainer", "train", "--config", str(config_path)]
            + (["--resume"] if resume else []),
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        checkpoints = sorted(p for p in (self.run_dir / "checkpoints").glob("step-*") if p.name[5:].isdigit())
        checkpoints = checkpoints if resume else []
        resume_from = int(checkpoints[-1].name.removeprefix("step-")) if checkpoints else 0
        self.lives.append(TrainerLife(resumed=resume, started=time.monotonic(), resume_from=resume_from))

    def scrape_trainer(self) -> None:
        """The current life's counters (kept: the last scrape before a death is what that life counted)."""
        try:
            snapshot = scrape(self.metrics_port)
        except OSError:
            return
        life = self.lives[-1]
        life.duplicates = sum(
            sample_value(snapshot, "rewardline_trainer_duplicate_rewards_total", source=k) for k in self.kinds
        )
        life.outages = sum(
            sample_value(snapshot, "rewardline_trainer_source_outages_total", source=k) for k in self.kinds
        )
        life.reward_errors = sum(
            sample_value(snapshot, "rewardline_trainer_reward_errors_total", source=k) for k in self.kinds
        )

    def remember_order(self) -> None:
        for record in history(self.run_dir):
            self.seen.setdefault(int(record["step"]), list(record["prompts"]))

    # --- faults ----------------------------------------------------------------------------------------------
    def busy(self, kind: str) -> Replica:
        """The live replica of ``kind`` that scored last (the one the trainer's stream is on)."""
        alive = [r for r in self.replicas[kind] if r.service.process and r.service.process.poll() is None]
        if not alive:
            return self.replicas[kind][0]
        for replica in alive:
            replica.refresh()
        return max(alive, key=lambda r: r.last_active)

    def hit(self, replica: Replica, sig: signal.Signals, down_s: float) -> str:
        process = replica.service.process
        if process is None or process.poll() is not None:
            return "already down"
        replica.refresh()
        process.send_signal(sig)
        if sig == signal.SIGKILL:
            replica.exits.append(process.wait())
            replica.died()
            replica.restart_at = time.monotonic() + down_s
        else:
            replica.restart_at = float("inf")  # once it has drained
        return f"port {replica.service.port}"

    def alive(self, kinds: Sequence[str]) -> list[Replica]:
        return [r for k in kinds for r in self.replicas[k] if r.service.process and r.service.process.poll() is None]

    def wait_in_flight(self, kinds: Sequence[str]) -> tuple[Replica | None, float]:
        """The first live replica of ``kinds`` seen with samples in its queue (rewardline_queue_depth, which the
        services' --max-wait-ms keeps up for a while each step), and how many; (None, 0) after IN_FLIGHT_WAIT_S
        (the fault then lands between batches)."""
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while time.monotonic() < deadline and self.trainer is not None and self.trainer.poll() is None:
            for replica in self.alive(kinds):
                try:
                    depth = sample_value(scrape(replica.service.metrics_port), "rewardline_queue_depth")
                except OSError:
                    continue
                if depth > 0:
                    return replica, depth
            time.sleep(0.01)
        return None, 0.0

    def serving(self, replica: Replica) -> bool:
        try:
            return sample_value(scrape(replica.service.metrics_port), "rewardline_serving") == 1
        except OSError:
            return False

    def control(self, action: str) -> None:
        """Pause or Resume through the trainer's control API, retried while it is not up yet (a resumed trainer
        opens it after loading)."""
        import grpc

        from rewardline.trainer.control import ControlClientConfig, control_call

        deadline = time.monotonic() + 600
        while self.trainer is not None and self.trainer.poll() is None:
            try:
                control_call(ControlClientConfig(target=f"127.0.0.1:{self.control_port}", timeout=10), action)
                return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_replicas_serving(self, kind: str) -> str:
        """Until both replicas of ``kind`` serve again (as a PodDisruptionBudget would have it): one replica's fault
        must not become an outage because the other is still loading (outages are their own event). The trainer
        is paused meanwhile (between steps, through its control API), so that the fault still lands mid-run on a
        machine where loading a model takes longer than the rest of the run."""
        if all(self.serving(r) for r in self.replicas[kind]):
            return ""
        started = time.monotonic()
        self.control("pause")
        while not all(self.serving(r) for r in self.replicas[kind]):
            assert time.monotonic() < started + 300, f"{kind}: a replica did not come back within 300 s"
            self.restart_replicas()
            time.sleep(0.2)
        self.control("resume")
        return f" (the trainer paused {time.monotonic() - started:.1f} s for the other replica to load)"

    def fire(self, event: Event) -> None:
        paused = self.wait_replicas_serving(event.kind) if event.action in ("sigkill", "sigterm") else ""
        kinds = [event.kind] if event.kind else self.kinds
        caught, depth = self.wait_in_flight(kinds)
        step = self.current_step()  # the last step logged when the signal goes
        moment = f"with {depth:.0f} samples queued" if caught else "between batches"
        if caught:
            self.in_flight += 1
        if event.action in ("sigkill", "sigterm"):
            sig = signal.SIGKILL if event.action == "sigkill" else signal.SIGTERM
            where = self.hit(caught or self.busy(event.kind), sig, event.down_s)
            what = f"{sig.name} to the busy {event.kind} replica ({where}) {moment}{paused}"
        elif event.action == "outage":
            for replica in self.replicas[event.kind]:
                replica.refresh()
                self.hit(replica, signal.SIGKILL, event.down_s)
            what = f"SIGKILL to both {event.kind} replicas {moment}, down {event.down_s:.0f} s"
        else:
            sig = signal.SIGKILL if event.action == "sigkill-trainer" else signal.SIGTERM
            self.stop_trainer(sig)
            self.start_trainer(resume=True)
            what = (
                f"{sig.name} to the trainer {moment} (it had logged step {self.lives[-2].steps_at_end}), then "
                f"--resume from step {self.lives[-1].resume_from}"
            )
        self.fired.append(f"step {event.at_step} due, after step {step}: {what}")
        self.say(self.fired[-1])

    def stop_trainer(self, sig: signal.Signals) -> None:
        assert self.trainer is not None
        self.scrape_trainer()
        self.remember_order()
        life = self.lives[-1]
        self.trainer.send_signal(sig)
        life.exit_code = self.trainer.wait(300)
        life.steps_at_end = self.current_step()  # what this life logged, now that it cannot log more
        life.ended_by = sig.name
        if sig == signal.SIGTERM:
            assert life.exit_code == 0, f"the trainer's SIGTERM exit: {life.exit_code} (see trainer logs)"
        self.remember_order()  # SIGTERM: the last whole step is logged before the exit

    def restart_replicas(self) -> None:
        now = time.monotonic()
        for replicas in self.replicas.values():
            for replica in replicas:
                process = replica.service.process
                if replica.restart_at is None or process is None:
                    continue
                if replica.restart_at == float("inf"):
                    if process.poll() is None:
                        continue
                    replica.exits.append(process.returncode)
                    replica.died()
                elif now < replica.restart_at:
                    continue
                replica.restart_at = None
                replica.lives += 1
                replica.service.spawn()  # not waited for: the trainer's channel finds it when it serves

    def current_step(self) -> int:
        """The last step logged, not counting steps a dead life logged after the checkpoint the current one
        resumed from (they stay in metrics.jsonl until the new life has loaded and rewrites it)."""
        life = self.lives[-1] if self.lives else None
        steps = [
            int(r["step"])
            for r in history(self.run_dir)
            if life is None or r["step"] <= life.resume_from or r["time"] >= life.started_wall
        ]
        return max(steps, default=0)

    # --- the run ---------------------------------------------------------------------------------------------
    def run(self) -> ChaosReport:
        started = time.monotonic()
        self.deadline = started + self.timeout_s
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self.say(f"starting {', '.join(self.kinds)} (two replicas each)")
            # The trainer loads while the services do, and is held (Pause, between steps) until every replica
            # serves: one replica up is enough to train, and the schedule's first fault must find two.
            self.spawn_services()
            self.start_trainer(resume=False)
            self.control("pause")
            self.wait_services()
            self.control("resume")
            pending = list(self.schedule)
            watcher = threading.Thread(target=self.watch, name="chaos-watch", daemon=True)
            watcher.start()
            while True:
                assert self.trainer is not None
                code = self.trainer.poll()
                if code is not None:
                    life = self.lives[-1]
                    life.exit_code, life.steps_at_end = code, self.current_step()
                    assert code == 0, f"the trainer exited with {code} (see {self.work}/trainer-*.log)"
                    break
                assert time.monotonic() < self.deadline, f"not done within {self.timeout_s:.0f} s"
                step = self.current_step()
                if pending and step >= pending[0].at_step:
                    self.fire(pending.pop(0))
                    continue
                self.restart_replicas()
                time.sleep(POLL_S)
            self.watching.clear()
            watcher.join()
            assert not pending, f"the run ended before {[e.describe() for e in pending]}"
            for replicas in self.replicas.values():
                for replica in replicas:
                    replica.refresh()
                    draining = replica.service.process
                    if replica.restart_at == float("inf") and draining is not None:  # SIGTERMed, not yet restarted
                        replica.exits.append(draining.wait(REPLICA_GRACE_S + 60))
                        replica.restart_at = None
        finally:
            self.watching.clear()
            if self.trainer is not None and self.trainer.poll() is None:
                self.trainer.kill()
                self.trainer.wait()
            for replicas in self.replicas.values():
                for replica in replicas:
                    replica.service.kill()
        seconds = time.monotonic() - started
        final = history(self.run_dir)
        mismatches = [s for s, prompts in self.seen.items() if s <= len(final) and final[s - 1]["prompts"] != prompts]
        matched, differing = None, []
        if self.reference:
            reference = self.reference_run()
            pairs = list(zip(final, reference))
            differing = [int(a["step"]) for a, b in pairs if a["prompts"] != b["prompts"]]
            matched = len(pairs) - len(differing)
        return ChaosReport(
            steps=self.steps,
            prompts_per_step=self.prompts_per_step,
            n=self.n,
            sources=self.kinds,
            final=final,
            lives=self.lives,
            fired=self.fired,
            in_flight=self.in_flight,
            order_checked=len(self.seen),
            order_mismatches=sorted(mismatches),
            reference_matched=matched,
            reference_mismatches=differing,
            replica_lives={f"{k}/{i}": r.lives for k, rs in self.replicas.items() for i, r in enumerate(rs)},
            replica_exits={f"{k}/{i}": r.exits for k, rs in self.replicas.items() for i, r in enumerate(rs)},
            service_scored=sum(r.scored for rs in self.replicas.values() for r in rs),
            seconds=seconds,
        )

    def reference_run(self) -> list[dict[str, Any]]:
        """The same run uninterrupted, with the exact-answer Python reward instead of the services."""
        run_dir = self.work / "reference"
        config_path = self.work / "reference.yaml"
        config = train_config(self.models, run_dir, {}, self.steps, self.prompts_per_step, self.n, self.seed)
        config_path.write_text(yaml.safe_dump(config))
        self.say("the uninterrupted reference run")
        with open(self.work / "reference.log", "ab") as log:
            done = subprocess.run(
                [sys.executable, "-m", "rewardline.trainer", "train", "--config", str(config_path)],
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                stdout=log,
                stderr=log,
                timeout=max(self.deadline - time.monotonic(), 600),
            )
        assert done.returncode == 0, f"the reference run failed (see {self.work}/reference.log)"
        return history(run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24, help="training steps (the schedule's last fault: 19)")
    parser.add_argument("--kinds", default="reward,uncertainty", help="services, two replicas of each")
    parser.add_argument("--no-reference", action="store_true", help="skip the uninterrupted run (data order)")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (logs, run)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    from rewardline.trainer.local_models.build import ensure_models

    ensure_models(MODELS)
    kinds = [k for k in args.kinds.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        work = args.keep or Path(tmp)
        chaos = Chaos(work, kinds=kinds, steps=args.steps, reference=not args.no_reference, timeout_s=args.timeout)
        report = chaos.run()
    for line in report.lines():
        print(line)
    try:
        load = os.getloadavg()
        print(f"[chaos] load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
