"""What the reward service reads: multi-attribute heads, chat templates or plain text, safetensors only."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import grpc
import pytest
import torch
from support import InProcessRewardModel, assert_close, mixed_length_pairs, samples
from transformers import AutoTokenizer

from rewardline.services.api import pb
from rewardline.services.backends.hf import HFClassifier
from rewardline.services.client import RewardClient
from rewardline.services.process import ServiceProcess
from rewardline.trainer.local_models.architectures import save_model, untrained_classifier

ATTRIBUTES = ["helpfulness", "correctness", "verbosity"]


@pytest.fixture(scope="module")
def multi_attribute_dir(local_models, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(local_models / "reward")
    out = tmp_path_factory.mktemp("models") / "armo-like"
    save_model(untrained_classifier(tokenizer, ATTRIBUTES, seed=3), tokenizer, out)
    return out


@pytest.fixture(scope="module")
def plain_text_dir(local_models, tmp_path_factory):
    """The reward model with its chat template removed: the service must concatenate instead."""
    out = tmp_path_factory.mktemp("models") / "no-template"
    shutil.copytree(local_models / "reward", out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    assert not AutoTokenizer.from_pretrained(out).chat_template
    return out


def test_multi_attribute_model_returns_every_attribute_and_the_first_as_score(multi_attribute_dir):
    reference = InProcessRewardModel(multi_attribute_dir)
    pairs = mixed_length_pairs(5, seed=7)
    with ServiceProcess("reward", ["--model", str(multi_attribute_dir)]) as svc, RewardClient(svc.target) as c:
        info = c.info()
        rewards = c.score(samples(pairs))
    assert list(info.attributes) == ATTRIBUTES
    assert dict(info.score_weights) == {"helpfulness": 1.0, "correctness": 0.0, "verbosity": 0.0}
    for reward, pair in zip(rewards, pairs):
        logits = reference.logits(*pair)
        assert_close([reward.attributes[a] for a in ATTRIBUTES], logits)
        assert reward.score == pytest.approx(logits[0], abs=1e-4)


def test_score_weights_combine_attributes(multi_attribute_dir):
    reference = InProcessRewardModel(multi_attribute_dir)
    pairs = mixed_length_pairs(4, seed=8)
    args = ["--model", str(multi_attribute_dir), "--score-weights", "correctness=0.25,verbosity=-0.5"]
    with ServiceProcess("reward", args) as svc, RewardClient(svc.target) as c:
        rewards = c.score(samples(pairs))
    expected = [0.25 * line[1] - 0.5 * line[2] for line in (reference.logits(*p) for p in pairs)]
    assert_close([r.score for r in rewards], expected)


def test_weights_naming_an_unknown_attribute_refuse_to_start(multi_attribute_dir):
    command = ServiceProcess("reward", ["--model", str(multi_attribute_dir), "--score-weights", "honesty=1"]).command()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "unknown attributes ['honesty']" in result.stderr


def test_without_a_chat_template_prompt_and_response_are_concatenated(plain_text_dir):
    reference = InProcessRewardModel(plain_text_dir)
    pairs = mixed_length_pairs(6, seed=9)
    with ServiceProcess("reward", ["--model", str(plain_text_dir)]) as svc, RewardClient(svc.target) as c:
        rewards = c.score(samples(pairs))
        assert not c.info().chat_template
        with pytest.raises(grpc.RpcError) as err:
            c.score(
                [
                    pb.Sample(
                        id="chat",
                        messages=[pb.Message(role="user", content="q"), pb.Message(role="assistant", content="a")],
                    )
                ]
            )
    assert_close([r.score for r in rewards], [reference.score(*p) for p in pairs])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "need a chat template" in err.value.details()


def test_messages_are_rendered_with_the_chat_template(local_models):
    reference = InProcessRewardModel(local_models / "reward")
    conversation = [
        {"role": "system", "content": "You are a careful calculator."},
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "42"},
    ]
    text = reference.tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = torch.tensor([reference.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        expected = reference.model(input_ids=ids).logits[0, 0].item()
    with ServiceProcess("reward", ["--model", str(local_models / "reward")]) as svc, RewardClient(svc.target) as c:
        (reward,) = c.score([{"id": "conv", "messages": conversation}])
    assert reward.score == pytest.approx(expected, abs=1e-4)


def test_pickled_weights_are_refused(tmp_path, local_models):
    model_dir = tmp_path / "pickled"
    shutil.copytree(local_models / "reward", model_dir)
    (model_dir / "model.safetensors").rename(model_dir / "pytorch_model.bin")
    result = subprocess.run(
        ServiceProcess("reward", ["--model", str(model_dir)]).command(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "safetensors only" in result.stderr and "pytorch_model.bin" in result.stderr


def test_hf_backend_scores_do_not_depend_on_padding(local_models):
    """Right padding + causal attention + last-non-pad pooling: alone or in a mixed batch, equal to 1e-4."""
    model_dir = local_models / "reward"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    backend = HFClassifier(model_dir, tokenizer, "cpu", "float32")
    reference = InProcessRewardModel(model_dir)
    batch = [reference.token_ids(*p) for p in mixed_length_pairs(16, seed=11)]
    together = backend.forward(batch)[:, 0].tolist()
    alone = [backend.forward([ids])[0, 0].item() for ids in batch]
    assert_close(together, alone)
    asyncio.run(backend.close())
