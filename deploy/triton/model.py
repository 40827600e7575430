"""rewardline's Triton Python-backend model: a Hugging Face sequence-classification checkpoint's raw logits.

This file is the one source of every generated model repository (``rewardline triton build-repo`` copies it to
``REPO/NAME/1/model.py``). It runs inside Triton's Python-backend stub, in whatever Python environment the
server gives the stub, which must have torch, transformers, safetensors and numpy<2 (this Triton build's
stub returns empty tensors with numpy 2).

Contract (the same one ``services/backends/triton.py`` and the trainer's Triton reward source speak, and the
one a TensorRT or ONNX model must keep to replace this one):
  inputs   input_ids       INT64 [batch, length]  right-padded with the pad id below
           attention_mask  INT64 [batch, length]  1 for real tokens, 0 for padding
  output   logits          FP32  [batch, num_outputs]  raw, before any sigmoid or softmax

Both inputs allow ragged batches, so Triton's dynamic batcher may put requests of different lengths into
one ``execute`` call; they are re-padded to the longest here and run as one forward pass. With causal
attention, padding after a sequence cannot change it, and the model's last-non-pad-token pooling finds the
same position in any batch, so a logit never depends on its neighbours. A request that cannot run (ids
outside the vocabulary, mismatched shapes) fails alone with INVALID_ARG; its neighbours still run.

Parameters (config.pbtxt ``parameters``): ``model_dir`` (absolute, or relative to this version directory
when the weights were copied into the repository), ``pad_token_id``, ``dtype`` (float32, bfloat16, float16),
``num_threads`` (torch threads per instance; 0 keeps torch's default).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AutoModelForSequenceClassification


def _parameter(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


class TritonPythonModel:
    """One instance per entry of the model's instance_group (each loads its own copy of the weights)."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        model_dir = _parameter(config, "model_dir", "")
        if not model_dir:
            raise pb_utils.TritonModelException("config.pbtxt has no model_dir parameter")
        if not os.path.isabs(model_dir):
            model_dir = os.path.join(args["model_repository"], args["model_version"], model_dir)
        threads = int(_parameter(config, "num_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        if args.get("model_instance_kind") == "GPU":
            self.device = f"cuda:{args['model_instance_device_id']}"
        else:
            self.device = "cpu"
        dtype = getattr(torch, _parameter(config, "dtype", "float32"))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=dtype, use_safetensors=True
        ).to(self.device)
        self.model.eval()
        pad = _parameter(config, "pad_token_id", "")
        if pad:
            # Llama-style heads pool the last non-pad token, found by comparing input_ids with this id.
            self.model.config.pad_token_id = int(pad)
        self.pad_id = int(self.model.config.pad_token_id if self.model.config.pad_token_id is not None else 0)
        self.vocab_size = int(self.model.config.get_text_config().vocab_size)
        self.num_outputs = int(self.model.config.num_labels)

    def _check(self, ids: np.ndarray, mask: np.ndarray) -> str | None:
        """Why this request cannot run, or None."""
        if ids.ndim != 2 or ids.shape != mask.shape:
            return (
                f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must have the same [batch, "
                "length] shape"
            )
        if ids.shape[1] == 0:
            return "input_ids has no tokens"
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            return f"input_ids holds ids outside the vocabulary [0, {self.vocab_size})"
        return None

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        runnable: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, request in enumerate(requests):
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
            problem = self._check(ids, mask)
            if problem is not None:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)
                )
            else:
                runnable.append((i, ids, mask))
        if runnable:
            try:
                logits = self._forward([ids for _, ids, _ in runnable], [mask for _, _, mask in runnable])
            except Exception as e:  # noqa: BLE001 — every request of the batch gets the error, the model stays up
                error = pb_utils.TritonError(f"forward pass failed: {e}", pb_utils.TritonError.INTERNAL)
                for i, _, _ in runnable:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=error)
                return responses
            start = 0
            for i, ids, _ in runnable:
                rows = logits[start : start + ids.shape[0]]
                start += ids.shape[0]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", rows)])
        return responses

    def _forward(self, ids_list: list[np.ndarray], mask_list: list[np.ndarray]) -> np.ndarray:
        """All requests' rows, re-padded to the longest, in one forward pass."""
        rows = sum(ids.shape[0] for ids in ids_list)
        longest = max(ids.shape[1] for ids in ids_list)
        input_ids = np.full((rows, longest), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((rows, longest), dtype=np.int64)
        start = 0
        for ids, mask in zip(ids_list, mask_list):
            input_ids[start : start + ids.shape[0], : ids.shape[1]] = ids
            attention_mask[start : start + ids.shape[0], : ids.shape[1]] = mask
            start += ids.shape[0]
        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.device),
            ).logits
        return np.ascontiguousarray(logits.float().cpu().numpy(), dtype=np.float32)

    def finalize(self) -> None:
        self.model = None
