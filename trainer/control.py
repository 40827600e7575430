"""The daemon's control API: gRPC TrainerService (Status, Pause, Resume, Checkpoint), health and reflection.

The server runs on its own threads and only records requests in `Control`; the training loop acts on them at
step boundaries (a half-done update is never checkpointed or interrupted). Checkpoint blocks the caller until
the loop has written it, so a client gets back the path of a checkpoint that exists.

It can stop training, so it binds to loopback unless ``control.host`` says otherwise, and takes the services' TLS,
mutual TLS and tokens (``control.tls_cert``, ``control.auth_tokens``, ...): Pause, Resume and Checkpoint need a token
with the ``admin`` scope, Status any valid token, health none; ``control.health_port`` serves health alone in
plaintext for kubelet's probes. ``rewardline control status|pause|resume|checkpoint`` is its client
(``ControlClientConfig``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import BaseModel, ConfigDict, Field

from rewardline.services.auth import AuthInterceptor, Observer, TokenStore
from rewardline.services.client import ChannelSettings, call_metadata, open_channel
from rewardline.services.config import ClientSecurity, make_server_tls
from rewardline.services.security import HealthPort, add_port, warn_if_exposed
from rewardline.trainer.config import ControlConfig
from rewardline.v1 import trainer_pb2 as tpb
from rewardline.v1 import trainer_pb2_grpc as tpb_grpc

log = logging.getLogger(__name__)
TRAINER_SERVICE = tpb.DESCRIPTOR.services_by_name["TrainerService"].full_name


@dataclass
class CheckpointRequest:
    done: threading.Event = field(default_factory=threading.Event)
    step: int = 0
    path: str = ""


class Control:
    """The state the API reports and the requests it leaves for the training loop (thread-safe)."""

    def __init__(
        self,
        run_dir: str,
        config_hash: str,
        algorithm: str,
        world_size: int,
        max_steps: int | None,
        waiting_for: Callable[[], list[str]] = list,
    ) -> None:
        self.lock = threading.Lock()
        self.state: int = tpb.TRAINER_STATE_STARTING
        self.step = 0
        self.reward = float("nan")
        self.kl = float("nan")
        self.checkpoint_step = 0
        self.checkpoint_path = ""
        self.pause_requested = False
        self.checkpoints: list[CheckpointRequest] = []
        self.run_dir, self.config_hash, self.algorithm, self.world_size = run_dir, config_hash, algorithm, world_size
        self.max_steps = max_steps or 0
        self.waiting_for = waiting_for

    def set_state(self, state: int) -> None:
        with self.lock:
            self.state = state

    def stepped(self, step: int, reward: float, kl: float) -> None:
        with self.lock:
            self.step, self.reward, self.kl = step, reward, kl

    def take_checkpoint_requests(self) -> list[CheckpointRequest]:
        with self.lock:
            out, self.checkpoints = self.checkpoints, []
            return out

    def checkpointed(self, step: int, path: str, requests: list[CheckpointRequest]) -> None:
        with self.lock:
            self.checkpoint_step, self.checkpoint_path = step, path
        for request in requests:
            request.step, request.path = step, path
            request.done.set()

    def status(self) -> tpb.StatusResponse:
        waiting = self.waiting_for()
        with self.lock:
            state = tpb.TrainerState.Name(self.state)
            if self.state == tpb.TRAINER_STATE_RUNNING and waiting:
                state = tpb.TrainerState.Name(tpb.TRAINER_STATE_WAITING_FOR_REWARDS)
            return tpb.StatusResponse(
                state=state,
                step=self.step,
                max_steps=self.max_steps,
                reward=self.reward,
                kl=self.kl,
                checkpoint_step=self.checkpoint_step,
                checkpoint_path=self.checkpoint_path,
                waiting_for_sources=waiting,
                run_dir=self.run_dir,
                config_hash=self.config_hash,
                algorithm=self.algorithm,
                world_size=self.world_size,
            )


class TrainerServicer(tpb_grpc.TrainerServiceServicer):
    def __init__(self, control: Control) -> None:
        self.control = control

    def Status(self, request: tpb.StatusRequest, context: grpc.ServicerContext) -> tpb.StatusResponse:
        return self.control.status()

    def Pause(self, request: tpb.PauseRequest, context: grpc.ServicerContext) -> tpb.PauseResponse:
        c = self.control
        with c.lock:
            if c.state == tpb.TRAINER_STATE_STOPPING:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the trainer is stopping")
            c.pause_requested = True
            step = c.step
        log.warning("pause requested through the control API", extra={"step": step})
        return tpb.PauseResponse(step=step)

    def Resume(self, request: tpb.ResumeRequest, context: grpc.ServicerContext) -> tpb.ResumeResponse:
        c = self.control
        with c.lock:
            if not c.pause_requested:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the trainer is not paused")
            c.pause_requested = False
            step = c.step
        log.warning("resume requested through the control API", extra={"step": step})
        return tpb.ResumeResponse(step=step)

    def Checkpoint(self, request: tpb.CheckpointRequest, context: grpc.ServicerContext) -> tpb.CheckpointResponse:
        c = self.control
        pending = CheckpointRequest()
        with c.lock:
            if c.state == tpb.TRAINER_STATE_STOPPING:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the trainer is stopping")
            c.checkpoints.append(pending)
        if not pending.done.wait(context.time_remaining()):
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the checkpoint is not written yet; it will be at the next step boundary",
            )
        return tpb.CheckpointResponse(step=pending.step, path=pending.path)


class ControlServer:
    def __init__(self, control: Control, config: ControlConfig, observe: Observer | None = None) -> None:
        assert config.port is not None
        self.tokens = TokenStore(config.auth_tokens) if config.auth_tokens else None
        interceptors = [AuthInterceptor(self.tokens, observe)] if self.tokens else []
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="control"), interceptors=interceptors
        )
        tpb_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(control), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (TRAINER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        tls = make_server_tls(config.tls_cert, config.tls_key, config.tls_client_ca)
        try:
            self.port = add_port(self.server, f"{config.host}:{config.port}", tls)
        except OSError:
            raise OSError(f"cannot listen on {config.host}:{config.port} for the control API") from None
        self.health_port = (
            HealthPort(self.health, config.host, config.health_port) if config.health_port is not None else None
        )
        warn_if_exposed("the trainer's control API", config.host, self.port, tls is not None, self.tokens is not None)

    def start(self) -> ControlServer:
        self.server.start()
        if self.health_port is not None:
            self.health_port.start()
        for name in ("", TRAINER_SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace=2).wait()
        if self.health_port is not None:
            self.health_port.stop(0).wait()


# --- the client: rewardline control status|pause|resume|checkpoint -----------------------------------------------
class _ControlTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field("127.0.0.1:50052", min_length=1, description="host:port of the trainer's control API")
    timeout: float = Field(
        60.0, gt=0, description="deadline in seconds (Checkpoint waits for the step in progress to end)"
    )


class ControlClientConfig(ClientSecurity, _ControlTarget):
    """``rewardline control ACTION``: the trainer's control API at ``target``, with TLS and a token as the server
    asks (Pause, Resume and Checkpoint need a token with the admin scope)."""


# action -> (TrainerService method, its request)
CONTROL_ACTIONS = {
    "status": ("Status", tpb.StatusRequest),
    "pause": ("Pause", tpb.PauseRequest),
    "resume": ("Resume", tpb.ResumeRequest),
    "checkpoint": ("Checkpoint", tpb.CheckpointRequest),
}


def control_call(config: ControlClientConfig, action: str) -> dict[str, object]:
    """One TrainerService call; its answer as a dict (grpc.RpcError when refused)."""
    from google.protobuf.json_format import MessageToDict

    method, request = CONTROL_ACTIONS[action]
    # pick_first: one trainer, nothing to balance; and round_robin would apply the channel's client-side health
    # check, which asks for the reward service's health name: the trainer serves only its own, so every call would
    # be refused as "backend unhealthy".
    settings = config.channel_settings(ChannelSettings(retry=None, load_balancing="pick_first"))
    with open_channel(config.target, settings) as channel:
        call = getattr(tpb_grpc.TrainerServiceStub(channel), method)
        answer = call(request(), timeout=config.timeout, metadata=call_metadata(settings))
    return MessageToDict(answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
