"""The ``triton`` backend: the forward pass runs in NVIDIA Triton Inference Server, called over gRPC.

The service still renders, tokenizes, caches and batches (its batcher forms length-aware batches under a
token budget); each batch goes to Triton as one KServe v2 ``ModelInfer`` call through tritonclient's asyncio
gRPC client. Several batches may be in flight at once (``concurrency``): Triton's dynamic batcher merges
them, so the service's batcher should not serialize what Triton can overlap.

Triton may go away and come back while the service runs. ``ready()`` asks Triton whether the model is ready
(the server polls it every second and folds it into health); calls made meanwhile fail with UNAVAILABLE,
which clients retry. The first time the model is seen ready (and after every outage) its configuration is
checked against the service's model directory: the number of outputs, and the weights' revision when the
repository was made by ``rewardline triton build-repo``, so that ``model_revision`` in every Reward stays
true. A mismatch keeps the service NOT_SERVING and is logged.

Nothing here needs Triton to be up at load: the tokenizer, the config and the revision come from the model
directory, and the gRPC channel is opened lazily in the serving event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from transformers import AutoConfig, PreTrainedTokenizerBase

from rewardline.services.backends.base import CostModel
from rewardline.services.errors import ServiceError
from rewardline.services.modeling import pad_id_for, weights_revision
from rewardline.services.triton.protocol import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    channel_args,
    pad_batch,
    service_error,
    status_code,
)

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
REVISION_PARAMETER = "rewardline_revision"


class TritonSampleError(RuntimeError):
    """Triton refused a multi-sample batch for its content; the batcher retries its samples one by one,
    so one bad sample cannot fail its neighbours."""


class TritonClassifier:
    """A sequence-classification model hosted by Triton, behind the ``ClassifierBackend`` interface."""

    name = "triton"
    cost_model: CostModel = "padded"
    max_padding: float | None = None  # Triton's device is not ours to know; --max-batch-padding sets a limit
    # The weights' dtype is the Triton model configuration's business (deploy/triton/config.pbtxt.in).
    dtype = "remote"

    def __init__(
        self,
        model_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        url: str,
        model: str,
        timeout_s: float = 30.0,
        concurrency: int = 4,
    ) -> None:
        config = AutoConfig.from_pretrained(model_dir)
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.device = f"triton://{url}/{model}"
        self.num_outputs = int(config.num_labels)
        self.pad_id = pad_id_for(tokenizer, config.pad_token_id)
        self.model_dir = Path(model_dir)
        self._revision: str | None = None  # hashed when first needed: large weights take a while
        self.max_batch_size: int | None = None  # Triton's, learned when the model is first seen ready
        self._checked = False
        self.mismatch: list[str] = []  # why Triton's model was last refused (empty: it was not)
        self._client: Any = None

    def _triton(self) -> Any:
        """The asyncio client, created in the loop that uses it (the model loads on a worker thread)."""
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url, channel_args=channel_args())
        return self._client

    async def classify(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.num_outputs), dtype=np.float32)
        step = self.max_batch_size or len(batch)
        chunks = [batch[i : i + step] for i in range(0, len(batch), step)]
        parts = await asyncio.gather(*(self._infer(chunk, len(batch)) for chunk in chunks))
        return np.concatenate(parts, axis=0)

    async def _infer(self, chunk: Sequence[Sequence[int]], batch_size: int) -> np.ndarray:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        input_ids, attention_mask = pad_batch(chunk, self.pad_id)
        inputs = []
        for name, array in ((INPUT_IDS, input_ids), (ATTENTION_MASK, attention_mask)):
            tensor = InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        try:
            result = await self._triton().infer(
                self.model, inputs, outputs=[InferRequestedOutput(LOGITS)], client_timeout=self.timeout_s
            )
        except InferenceServerException as e:
            code = status_code(e)
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL) and batch_size > 1:
                raise TritonSampleError(f"Triton refused a batch of {batch_size}: {e}") from e
            if code is grpc.StatusCode.UNAVAILABLE:
                self._checked = False  # check the configuration again when it comes back
            raise service_error(e, self.url, self.model) from e
        logits = result.as_numpy(LOGITS)
        if logits is None or logits.shape != (len(chunk), self.num_outputs):
            shape = None if logits is None else list(logits.shape)
            raise ServiceError(
                grpc.StatusCode.INTERNAL,
                f"Triton model {self.model!r} returned logits of shape {shape}, expected "
                f"{[len(chunk), self.num_outputs]}",
            )
        return logits.astype(np.float32, copy=False)

    async def ready(self) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            ready = bool(await self._triton().is_model_ready(self.model, client_timeout=READY_TIMEOUT_S))
        except InferenceServerException:
            ready = False
        if not ready:
            self._checked = False
            return False
        if not self._checked:
            self._checked = await self._check_model()
        return self._checked

    async def _check_model(self) -> bool:
        """Whether Triton's model is the one this service describes; learns its max batch size."""
        from tritonclient.utils import InferenceServerException

        try:
            response = await self._triton().get_model_config(self.model, client_timeout=READY_TIMEOUT_S)
        except InferenceServerException:
            return False
        config = response.config
        problems = []
        outputs = {o.name: list(o.dims) for o in config.output}
        if LOGITS not in outputs:
            problems.append(f"it has no output named {LOGITS!r} (outputs: {sorted(outputs)})")
        elif outputs[LOGITS][-1:] not in ([self.num_outputs], [-1]):
            problems.append(
                f"its {LOGITS!r} has dims {outputs[LOGITS]}, and the model directory's config has "
                f"{self.num_outputs} labels"
            )
        remote_revision = (
            config.parameters[REVISION_PARAMETER].string_value if REVISION_PARAMETER in config.parameters else ""
        )
        if remote_revision and remote_revision != await self.revision():
            problems.append(
                f"it serves weights revision {remote_revision} and the model directory holds {await self.revision()}"
            )
        if problems:
            if problems != self.mismatch:  # the server polls every second: say it once
                log.error(
                    "Triton's model does not match the model directory; staying NOT_SERVING",
                    extra={"triton": self.url, "model": self.model, "problems": problems},
                )
            self.mismatch = problems
            return False
        self.mismatch = []
        self.max_batch_size = int(config.max_batch_size) or None
        return True

    async def revision(self) -> str:
        """The model directory's weights revision (as build-repo records it), hashed once, off the event loop."""
        if self._revision is None:
            self._revision = await asyncio.to_thread(weights_revision, self.model_dir)
        return self._revision

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
