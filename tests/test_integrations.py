"""The adapters (rewardline.services.integrations) in this environment, where no training framework is installed:
each is called the way its framework calls it (the keyword arguments and shapes named in each adapter's source
notes) against real services, and must return gRPC Score's numbers for the same samples (to 1e-5). The frameworks
themselves drive the adapters in tests/test_peers.py, in an environment of their own.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from support import openrlhf_payload
from transformers import AutoTokenizer

from rewardline.services.client import RewardClient

TOLERANCE = 1e-5
FRAMEWORKS = ("trl", "verl", "openrlhf", "nemo_rl", "ray", "datasets", "accelerate")


@pytest.fixture(scope="module")
def clients(face_services):
    opened = {kind: RewardClient(svc.target, timeout=120) for kind, svc in face_services.items()}
    yield opened
    for client in opened.values():
        client.close()


@pytest.fixture(scope="module")
def problems(local_models) -> list[dict]:
    lines = (local_models / "data" / "prompts_test.jsonl").read_text().splitlines()[:8]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def ood_texts(local_models) -> list[tuple[str, str]]:
    records = [json.loads(line) for line in (local_models / "data" / "ood.jsonl").read_text().splitlines()]
    return [(r["prompt"], r["response"]) for r in records[:12]]


def grpc_scores(client: RewardClient, samples: list[dict]) -> list[float]:
    return [r.score for r in client.score([{"id": str(i), **s} for i, s in enumerate(samples)])]


def test_adapters_import_without_any_framework():
    """A user's script imports the adapter before (or without) the framework: none is imported at module level."""
    blocked = ", ".join(repr(f) for f in FRAMEWORKS)
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        f"    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in ({blocked},): raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import rewardline.services.integrations.trl as t, rewardline.services.integrations.verl\n"
        "import rewardline.services.integrations.openrlhf, rewardline.services.integrations.nemo_rl as n\n"
        "assert n.EnvironmentReturn is n.StandaloneEnvironmentReturn\n"
        "print(t.reward_function('x:1').__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "rewardline"


# -- TRL -----------------------------------------------------------------------------------------------------------
def trl_call(function, prompts, completions, **columns):
    """As GRPOTrainer._calculate_rewards calls a reward function (trl 1.16.0), with log_extra and log_metric."""
    logged_extra: dict[str, list] = {}
    logged_metric: dict[str, list] = {}
    kwargs = dict(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1, 2]] * len(prompts),
        trainer_state=object(),
        log_extra=lambda column, values: logged_extra.setdefault(column, []).extend(values),
        log_metric=lambda name, value: logged_metric.setdefault(name, []).append(value),
        **columns,
    )
    out = function(**kwargs)
    if asyncio.iscoroutine(out):
        out = asyncio.run(out)
    return out, logged_extra, logged_metric


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_trl_reward_function_standard_and_conversational(asynchronous, face_services, clients, problems):
    from rewardline.services.integrations.trl import reward_function

    function = reward_function(face_services["reward"].target, name="rm", asynchronous=asynchronous)
    assert function.__name__ == "rm" and asyncio.iscoroutinefunction(type(function).__call__) == asynchronous
    prompts = [p["prompt"] for p in problems]
    completions = [f"The answer is {p['answer']}." for p in problems[:-1]] + [""]
    rewards, extra, metric = trl_call(function, prompts, completions, answer=[p["answer"] for p in problems])
    expected = grpc_scores(clients["reward"], [{"prompt": p, "response": c} for p, c in zip(prompts, completions)])
    assert rewards == pytest.approx(expected, abs=TOLERANCE)
    assert set(extra) == {"rm/num_tokens", "rm/truncated"} and set(metric) == set(extra)
    conversational_prompts = [[{"role": "user", "content": p}] for p in prompts]
    conversational = [[{"role": "assistant", "content": [{"type": "text", "text": c}]}] for c in completions]
    rewards, _, _ = trl_call(function, conversational_prompts, conversational)
    assert rewards == pytest.approx(expected, abs=TOLERANCE)  # the same conversation, rendered the same


def test_trl_uncertainty_penalty_mask_and_logs(face_services, clients, problems, ood_texts):
    from rewardline.services.integrations.trl import reward_function

    pairs = [(p["prompt"], f"The answer is {p['answer']}.") for p in problems] + ood_texts
    function = reward_function(
        face_services["uncertainty"].target, name="urm", uncertainty_penalty=0.5, mask_out_of_distribution=True
    )
    rewards, extra, metric = trl_call(function, [p for p, _ in pairs], [c for _, c in pairs])
    served = clients["uncertainty"].score(
        [{"id": str(i), "prompt": p, "response": c} for i, (p, c) in enumerate(pairs)]
    )
    flagged = [r.uncertainty.out_of_distribution for r in served]
    print(f"{sum(flagged)} of {len(pairs)} samples flagged out of distribution")
    for got, reward, ood in zip(rewards, served, flagged):
        if ood:
            assert got is None
        else:
            assert got == pytest.approx(reward.score - 0.5 * reward.uncertainty.std, abs=TOLERANCE)
    assert extra["urm/uncertainty_std"] == pytest.approx([r.uncertainty.std for r in served], abs=TOLERANCE)
    assert extra["urm/out_of_distribution"] == [float(f) for f in flagged]
    assert metric["urm/uncertainty_std"][0] == pytest.approx(
        np.mean([r.uncertainty.std for r in served]), abs=TOLERANCE
    )


def test_trl_judge_with_a_reference_column(face_services, clients, problems):
    from rewardline.services.integrations.trl import reward_function

    function = reward_function(face_services["judge"].target, name="judge", reference_column="answer")
    prompts = [p["prompt"] for p in problems[:4]]
    completions = [f"The answer is {p['answer']}." for p in problems[:4]]
    rewards, extra, _ = trl_call(function, prompts, completions, answer=[p["answer"] for p in problems[:4]])
    expected = grpc_scores(
        clients["judge"],
        [{"prompt": p, "response": c, "reference": q["answer"]} for p, c, q in zip(prompts, completions, problems)],
    )
    assert rewards == pytest.approx(expected, abs=TOLERANCE)
    assert extra["judge/verdict_probability"] == pytest.approx(expected, abs=TOLERANCE)


def test_trl_reward_function_pickles_without_its_client(face_services, problems):
    from rewardline.services.integrations.trl import reward_function

    function = reward_function(face_services["reward"].target, asynchronous=False)
    function(prompts=["What is 1 + 1?"], completions=["2"])
    again = pickle.loads(pickle.dumps(function))
    assert again(prompts=["What is 1 + 1?"], completions=["2"]) == function(
        prompts=["What is 1 + 1?"], completions=["2"]
    )


# -- verl ----------------------------------------------------------------------------------------------------------
def test_verl_compute_score_sync_async_and_batch(face_services, clients, problems):
    from rewardline.services.integrations import verl

    target = face_services["uncertainty"].target
    solutions = [f"The answer is {p['answer']}." for p in problems[:3]] + [""]
    infos = [{"prompt": p["prompt"], "index": i} for i, p in enumerate(problems[:4])]
    infos[1] = {"question": problems[1]["prompt"]}  # verl's gsm8k preprocessing keeps the question here
    infos[2] = {"prompt": np.array([{"role": "user", "content": problems[2]["prompt"]}], dtype=object)}  # parquet
    expected = clients["uncertainty"].score(
        [
            {"id": str(i), "prompt": p["prompt"], "response": s, "reference": p["answer"]}
            for i, (p, s) in enumerate(zip(problems, solutions))
        ]
    )
    sync = [
        verl.compute_score("math", s, p["answer"], info, target=target, uncertainty_penalty=1.0)
        for s, p, info in zip(solutions, problems, infos)
    ]

    async def awaited():
        return await asyncio.gather(
            *[
                verl.compute_score_async(
                    data_source="math", solution_str=s, ground_truth=p["answer"], extra_info=info, target=target
                )
                for s, p, info in zip(solutions, problems, infos)
            ]
        )

    concurrent = asyncio.run(awaited())
    batch = verl.compute_score_batch(["math"] * 4, solutions, [p["answer"] for p in problems[:4]], infos, target=target)
    for reward, one, a, b in zip(expected, sync, concurrent, batch):
        assert one["score"] == pytest.approx(reward.score - reward.uncertainty.std, abs=TOLERANCE)
        assert a["score"] == pytest.approx(reward.score, abs=TOLERANCE) and b["score"] == a["score"]
        assert one["rewardline_score"] == pytest.approx(reward.score, abs=TOLERANCE)
        assert one["out_of_distribution"] == float(reward.uncertainty.out_of_distribution)
    assert len({tuple(r) for r in sync + concurrent + batch}) == 1  # the same keys for every sample
    with pytest.raises(ValueError, match="extra_info has none of"):
        verl.compute_score("math", "x", "1", {"index": 0}, target=target)


# -- OpenRLHF ------------------------------------------------------------------------------------------------------
def test_openrlhf_reward_func_file(face_services, clients, problems, local_models, monkeypatch):
    from rewardline.services.integrations import openrlhf

    tokenizer = AutoTokenizer.from_pretrained(local_models / "policy")
    pairs = [(p["prompt"], f"The answer is {p['answer']}.") for p in problems[:3]] + [(problems[3]["prompt"], "")]
    queries, prompts = openrlhf_payload(tokenizer, pairs)
    labels = [p["answer"] for p in problems[:4]]
    expected = clients["judge"].score(
        [
            {"id": str(i), "prompt": p, "response": r, "reference": ref}
            for i, ((p, r), ref) in enumerate(zip(pairs, labels))
        ]
    )
    func = openrlhf.make_reward_func(face_services["judge"].target, tokenizer=str(local_models / "policy"))
    got = func(queries, prompts, labels)
    assert got["rewards"] == pytest.approx([r.score for r in expected], abs=TOLERANCE)
    assert got["extra_logs"]["verdict_probability"] == pytest.approx(got["scores"], abs=TOLERANCE)
    # the module itself, as OpenRLHF loads a --reward.remote_url path.py: the target from the environment
    monkeypatch.setenv("REWARDLINE_TARGET", face_services["judge"].target)
    monkeypatch.setenv("REWARDLINE_TOKENIZER", str(local_models / "policy"))
    monkeypatch.setattr(openrlhf, "_default", None)
    assert openrlhf.reward_func(queries[:1], prompts[:1], labels[:1])["rewards"] == pytest.approx(
        [expected[0].score], abs=TOLERANCE
    )


# -- NeMo-RL -------------------------------------------------------------------------------------------------------
# NeMo-RL's EnvironmentReturn at github.com/NVIDIA-NeMo/RL 7ea279abfbeb698b092856d0dab61e7cf39bc909,
# nemo_rl/environments/interfaces.py (the package cannot be installed: PyPI's nemo-rl is a 0.0.0 placeholder).
NEMO_RL_RETURN_FIELDS = ("observations", "metadata", "next_stop_strings", "rewards", "terminateds", "answers")


def test_nemo_rl_environment_scores_the_last_assistant_turn(face_services, clients, problems):
    import torch

    from rewardline.services.integrations.nemo_rl import EnvironmentReturn, RewardlineEnvironment

    assert EnvironmentReturn._fields == NEMO_RL_RETURN_FIELDS
    env = pickle.loads(pickle.dumps(RewardlineEnvironment({"target": face_services["reward"].target})))
    logs = [
        [
            {"role": "user", "content": p["prompt"], "token_ids": torch.tensor([1, 2])},
            {"role": "assistant", "content": f"The answer is {p['answer']}."},
        ]
        for p in problems[:3]
    ]
    logs.append(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": problems[3]["prompt"]},
            {"role": "assistant", "content": ""},
        ]
    )
    # a trailing turn after the assistant's (an environment's observation) is not what is scored; an earlier one is
    # the user's side of the conversation
    logs[0] = [*logs[0], {"role": "environment", "content": "feedback"}]
    logs[1] = [*logs[1], {"role": "environment", "content": "Try again."}, {"role": "assistant", "content": "7"}]
    out = env.step(logs, [{"answer": p["answer"]} for p in problems[:4]])
    expected = clients["reward"].score(
        [
            {
                "id": str(i),
                "messages": [
                    {"role": "user" if m["role"] == "environment" else m["role"], "content": m["content"]}
                    for m in (log[:-1] if log[-1]["role"] == "environment" else log)
                ],
            }
            for i, log in enumerate(logs)
        ]
    )
    assert out.rewards.dtype == torch.float32 and out.rewards.tolist() == pytest.approx(
        [r.score for r in expected], abs=TOLERANCE
    )
    assert out.terminateds.tolist() == [True] * 4 and out.next_stop_strings == [None] * 4
    assert out.answers == [
        f"The answer is {problems[0]['answer']}.",
        "7",
        f"The answer is {problems[2]['answer']}.",
        "",
    ]
    assert out.metadata[0]["answer"] == problems[0]["answer"] and "num_tokens" in out.metadata[0]["rewardline"]
    batch, metrics = env.global_post_process_and_metrics({"rewards": out.rewards})
    assert metrics["rewardline/mean_reward"] == pytest.approx(float(out.rewards.mean()))


def test_verl_on_a_judge_and_nemo_rl_on_an_uncertainty_service(face_services, clients, problems):
    """The adapters are kind-agnostic: a judge's verdict (the ground truth as its reference) through verl's
    compute_score, and an uncertainty model's penalised score through the NeMo-RL environment."""
    from rewardline.services.integrations import verl
    from rewardline.services.integrations.nemo_rl import RewardlineEnvironment

    p = problems[5]
    judged = verl.compute_score(
        "math", "The answer is 3.", p["answer"], {"prompt": p["prompt"]}, target=face_services["judge"].target
    )
    (expected,) = clients["judge"].score(
        [{"id": "j", "prompt": p["prompt"], "response": "The answer is 3.", "reference": p["answer"]}]
    )
    assert judged["score"] == pytest.approx(expected.score, abs=TOLERANCE)
    assert judged["verdict_probability"] == pytest.approx(expected.score, abs=TOLERANCE)
    env = RewardlineEnvironment({"target": face_services["uncertainty"].target, "uncertainty_penalty": 1.0})
    log = [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": ""}]
    out = env.step([log], [None])
    (uncertain,) = clients["uncertainty"].score([{"id": "u", "messages": log}])
    assert out.rewards.tolist() == pytest.approx([uncertain.score - uncertain.uncertainty.std], abs=TOLERANCE)
    assert out.metadata[0]["rewardline"]["uncertainty_std"] == pytest.approx(uncertain.uncertainty.std, abs=TOLERANCE)
