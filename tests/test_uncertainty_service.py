"""The uncertainty service, one real server per kind on a loopback port, used through gRPC.

Each kind is trained here for a few steps on the local reward model's frozen backbone (`rm train`'s own code),
saved, and served: these tests check wiring and math (served = computed in-process, std >= 0, quantiles
monotone, flag = std > threshold). How good the uncertainties are is the `uncertainty` build step's and
`rm eval`'s business (tests/test_rm_cli.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import grpc
import numpy as np
import pytest
from support import InProcessRewardModel, assert_close, metric, metrics

from rewardline.services.api import pb, pb_grpc
from rewardline.services.client import RewardClient
from rewardline.services.config import ServeConfig
from rewardline.services.process import ServiceProcess, start_all
from rewardline.services.uncertainty.model_format import SPEC_FILE, read_spec
from rewardline.services.uncertainty.scorer import UncertaintyScorer
from rewardline.trainer.reward_modeling.assemble import RMEnsembleConfig, assemble_checkpoint_ensemble
from rewardline.trainer.reward_modeling.rm_train import RMTrainConfig, TrainedModel, save_and_calibrate, train_model

LEVELS = [0.1, 0.25, 0.5, 0.75, 0.9]
GAUSSIAN_WEIGHTS = {"score": 0.7, "format": 0.3}


@dataclass
class Kind:
    name: str
    model_dir: Path
    trained: list[TrainedModel]  # the in-memory models (one, or the checkpoint ensemble's members)
    args: list[str]


@pytest.fixture(scope="module")
def texts(local_models) -> list[tuple[str, str]]:
    """In-distribution responses (right, wrong, malformed) and one of each kind of OOD input."""
    pairs = [json.loads(line) for line in (local_models / "data" / "prefs_test.jsonl").read_text().splitlines()[:5]]
    ood, seen = [], set()
    for line in (local_models / "data" / "ood.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] not in seen:
            seen.add(record["kind"])
            ood.append((record["prompt"], record["response"]))
    return [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs] + ood


@pytest.fixture(scope="module")
def kinds(local_models, tmp_path_factory) -> dict[str, Kind]:
    root = tmp_path_factory.mktemp("uncertainty")
    lines = (local_models / "data" / "prefs_train.jsonl").read_text().splitlines()
    (root / "prefs.jsonl").write_text("\n".join(lines[:240]) + "\n")
    (root / "heldout.jsonl").write_text("\n".join(lines[240:300]) + "\n")
    common = dict(
        data=root / "prefs.jsonl",
        base=local_models / "reward",
        freeze_backbone=True,
        steps=30,
        batch_size=64,
        heldout_fraction=0.25,
        device="cpu",
    )

    def train(name: str, **extra: object) -> TrainedModel:
        config = RMTrainConfig(**common, out=root / name, **extra)
        trained = train_model(config)
        save_and_calibrate(trained, config)
        return trained

    out = {
        "ensemble": Kind("ensemble", root / "ensemble", [train("ensemble", kind="ensemble", members=3)], []),
        # a URME-like pair of Gaussian heads over two attributes, served with a weighted combination
        "gaussian": Kind(
            "gaussian",
            root / "gaussian",
            [train("gaussian", kind="gaussian", members=2, attributes=["score", "format"])],
            ["--score-weights", ",".join(f"{k}={v}" for k, v in GAUSSIAN_WEIGHTS.items())],
        ),
        "quantile": Kind(
            "quantile", root / "quantile", [train("quantile", kind="quantile", quantile_levels=LEVELS)], []
        ),
    }
    members = [train(f"member{i}", kind="scalar", seed=i) for i in range(2)]
    assemble_checkpoint_ensemble(
        RMEnsembleConfig(
            members=[root / "member0", root / "member1"], data=root / "heldout.jsonl", out=root / "checkpoints"
        )
    )
    out["checkpoint_ensemble"] = Kind("checkpoint_ensemble", root / "checkpoints", members, [])
    return out


@pytest.fixture(scope="module")
def services(kinds):
    """The four services, started side by side (each loads and warms up on its own process)."""
    procs = {
        name: ServiceProcess("uncertainty", ["--model", str(k.model_dir), "--max-length", "256", *k.args])
        for name, k in kinds.items()
    }

    def stop(p: ServiceProcess) -> None:
        try:
            p.stop()
        finally:
            p.kill()

    start_all(procs.values())
    try:
        yield procs
    finally:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(stop, procs.values()))


@pytest.fixture(scope="module")
def clients(services):
    opened = {name: RewardClient(svc.target, timeout=60) for name, svc in services.items()}
    yield opened
    for c in opened.values():
        c.close()


def as_samples(texts: list[tuple[str, str]], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": p, "response": r} for i, (p, r) in enumerate(texts)]


@functools.cache
def in_process(model_dir: Path) -> InProcessRewardModel:
    return InProcessRewardModel(model_dir)


def reference(kind: Kind, prompt: str, response: str) -> dict:
    """Independent of services/uncertainty: transformers' forward on one unpadded sample, the output layout of the
    format (member, parameter, attribute) and the definitions of the proto, written out here with numpy."""
    spec = read_spec(kind.model_dir)
    k, a = spec.members, len(spec.attributes)
    if spec.kind == "checkpoint_ensemble":
        logits = np.array([in_process(d).logits(prompt, response) for d in spec.checkpoint_dirs(kind.model_dir)])
        heads = logits.reshape(k, 1, a)
    else:
        heads = np.array(in_process(kind.model_dir).logits(prompt, response)).reshape(k, -1, a)
    w = np.array([GAUSSIAN_WEIGHTS[n] for n in spec.attributes]) if spec.kind == "gaussian" else np.eye(a)[0]
    aleatoric, quantiles = 0.0, None
    if spec.kind == "quantile":
        levels = np.array(spec.quantile_levels)
        edges = np.concatenate([[0.0], (levels[1:] + levels[:-1]) / 2, [1.0]])
        per_member = np.sort(np.sort(heads, axis=1) @ w, axis=1)  # (K, Q)
        members = per_member @ np.diff(edges)
        quantiles = per_member.mean(axis=0)
        span = NormalDist().inv_cdf(levels[-1]) - NormalDist().inv_cdf(levels[0])
        aleatoric = np.sqrt(np.mean(((per_member[:, -1] - per_member[:, 0]) / span) ** 2))
    elif spec.kind == "gaussian":
        members = heads[:, 0, :] @ w
        aleatoric = np.sqrt(np.mean(np.exp(heads[:, 1, :]) @ w**2))
    else:
        members = heads[:, 0, :] @ w
    epistemic = float(np.std(members))
    return {
        "score": float(np.mean(members)),
        "members": members,
        "epistemic": epistemic,
        "aleatoric": float(aleatoric),
        "std": float(np.hypot(epistemic, aleatoric)),
        "quantiles": quantiles,
    }


@pytest.mark.parametrize("name", ["ensemble", "gaussian", "quantile", "checkpoint_ensemble"])
def test_each_kind_serves_the_mean_of_its_members_as_computed_in_process(name, kinds, clients, texts):
    kind = kinds[name]
    rewards = clients[name].score(as_samples(texts, f"{name}-"))
    assert [r.id for r in rewards] == [f"{name}-{i}" for i in range(len(texts))]
    expected = [reference(kind, *t) for t in texts]
    assert_close([r.score for r in rewards], [e["score"] for e in expected])
    for r, e in zip(rewards, expected):
        u = r.uncertainty
        assert_close(list(u.member_scores), list(e["members"]))
        assert_close([u.epistemic_std, u.aleatoric_std, u.std], [e["epistemic"], e["aleatoric"], e["std"]])
        assert u.std >= 0 and u.epistemic_std >= 0 and u.aleatoric_std >= 0
        assert r.score == pytest.approx(float(np.mean(u.member_scores)), abs=1e-5)
        if e["quantiles"] is not None:
            assert [q.level for q in u.quantiles] == pytest.approx(LEVELS)
            assert_close([q.value for q in u.quantiles], list(e["quantiles"]))
        else:
            assert len(u.quantiles) == 0
    assert {len(r.uncertainty.member_scores) for r in rewards} == {read_spec(kind.model_dir).members}
    assert len({round(r.uncertainty.std, 6) for r in rewards}) > 1  # the spread depends on the input


@pytest.mark.parametrize("name", ["ensemble", "gaussian", "quantile", "checkpoint_ensemble"])
def test_trained_saved_and_served_equals_the_model_in_memory(name, kinds, clients, texts):
    """Train -> save -> serve: what the trainer held in memory is what the service answers."""
    kind = kinds[name]
    rewards = clients[name].score(as_samples(texts, f"mem-{name}-"))
    if name == "checkpoint_ensemble":
        members = [t.predictor().predict(texts).score for t in kind.trained]
        assert_close([m for r in rewards for m in r.uncertainty.member_scores], list(np.stack(members, axis=1).ravel()))
        return
    predictor = kind.trained[0].predictor()
    if name == "gaussian":
        predictor.weights = np.array(list(GAUSSIAN_WEIGHTS.values()))
    out = predictor.predict(texts)
    assert_close([r.score for r in rewards], list(out.score))
    assert_close([r.uncertainty.std for r in rewards], list(out.std))
    if out.quantiles is not None:
        assert_close([q.value for r in rewards for q in r.uncertainty.quantiles], list(out.quantiles.ravel()))


def test_quantiles_are_non_decreasing_even_where_heads_cross(clients, kinds, texts):
    rewards = clients["quantile"].score(as_samples(texts, "mono-"))
    for r in rewards:
        values = [q.value for q in r.uncertainty.quantiles]
        assert values == sorted(values)
    # the heads were trained for a few steps only: somewhere their raw outputs cross, and sorting is what helps
    heads = np.array([in_process(kinds["quantile"].model_dir).logits(*t) for t in texts])
    assert (np.diff(heads, axis=1) < 0).any()


@pytest.mark.parametrize("name", ["ensemble", "gaussian", "quantile", "checkpoint_ensemble"])
def test_info_describes_the_uncertainty_model_and_its_threshold(name, kinds, clients):
    info = clients[name].info()
    spec = read_spec(kinds[name].model_dir)
    assert info.kind == pb.MODEL_KIND_UNCERTAINTY
    assert info.uncertainty_kind == spec.kind and info.num_members == spec.members
    assert list(info.attributes) == spec.attributes
    assert info.ood_threshold == pytest.approx(spec.calibration.threshold, rel=1e-6)
    assert list(info.quantile_levels) == pytest.approx(spec.quantile_levels)
    assert (info.backend, info.device, info.max_length) == ("hf", "cpu", 256)
    if name == "gaussian":
        assert dict(info.score_weights) == pytest.approx(GAUSSIAN_WEIGHTS)


def test_the_flag_agrees_with_the_calibrated_threshold(clients, texts):
    flags = []
    for name, client in clients.items():
        threshold = client.info().ood_threshold
        for r in client.score(as_samples(texts, f"flag-{name}-")):
            assert r.uncertainty.out_of_distribution == (r.uncertainty.std > threshold), (name, r)
            flags.append(r.uncertainty.out_of_distribution)
    assert any(flags) and not all(flags)  # both sides of the threshold were seen


def test_metrics_record_the_std_and_count_the_flags(services, clients, texts):
    svc, client = services["ensemble"], clients["ensemble"]
    before = metrics(svc.metrics_port)
    fresh = [(p + " (metrics)", r) for p, r in texts]  # not in the cache
    rewards = client.score(as_samples(fresh, "metrics-"))
    assert all(r.cached for r in client.score(as_samples(fresh, "again-")))  # like rewardline_score, computed ones only
    after = metrics(svc.metrics_port)

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    flagged = sum(r.uncertainty.out_of_distribution for r in rewards)
    assert delta("rewardline_uncertainty_std_count") == len(fresh)
    assert delta("rewardline_uncertainty_std_sum") == pytest.approx(sum(r.uncertainty.std for r in rewards), rel=1e-4)
    assert delta("rewardline_out_of_distribution_total") == flagged


def test_an_empty_response_is_scored_like_any_other(kinds, clients):
    (reward,) = clients["ensemble"].score([{"id": "e", "prompt": "What is 1 + 1?", "response": ""}])
    expected = reference(kinds["ensemble"], "What is 1 + 1?", "")
    assert abs(reward.score - expected["score"]) < 1e-4
    assert abs(reward.uncertainty.std - expected["std"]) < 1e-4


def test_bad_input_and_compare_are_refused_as_by_the_reward_service(services, clients):
    channel = grpc.insecure_channel(services["ensemble"].target)
    stub = pb_grpc.RewardServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        both = pb.Sample(id="e", prompt="p", response="r", messages=[pb.Message(role="assistant", content="r")])
        stub.Score(pb.ScoreRequest(samples=[both]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'e': give either" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Compare(pb.CompareRequest(id="c", prompt="p", response_a="a", response_b="b"), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()
    got = {
        r.id: r
        for r in clients["ensemble"].score_stream(
            [
                {"id": "good", "prompt": "What is 1 + 1?", "response": "The answer is 2."},
                {"id": "bad", "messages": [{"role": "user", "content": "p"}]},
            ]
        )
    }
    assert got["bad"].HasField("error") and not got["good"].HasField("error")
    assert got["good"].uncertainty.std > 0
    assert clients["ensemble"].health() == "SERVING"


# -- models that must not load --------------------------------------------------------------------------------


def load(model_dir: Path) -> UncertaintyScorer:
    scorer = UncertaintyScorer.load(ServeConfig(kind="uncertainty", model=model_dir))
    asyncio.run(scorer.close())
    return scorer


def test_members_with_different_tokenizers_are_refused(kinds, tmp_path):
    broken = tmp_path / "checkpoints"
    shutil.copytree(kinds["checkpoint_ensemble"].model_dir, broken)
    template = broken / "members" / "1" / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_begin|>"))
    with pytest.raises(ValueError, match="different tokenizer"):
        load(broken)


def test_a_spec_that_does_not_match_the_checkpoint_is_refused(kinds, tmp_path):
    broken = tmp_path / "ensemble"
    shutil.copytree(kinds["ensemble"].model_dir, broken)
    spec = json.loads((broken / SPEC_FILE).read_text())
    spec["members"] = 4
    (broken / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="has 3 outputs; its ensemble spec .* needs 4"):
        load(broken)


def test_a_plain_reward_model_is_not_served_as_an_uncertainty_model(local_models):
    with pytest.raises(ValueError, match="is not an uncertainty model"):
        load(local_models / "reward")


def test_a_checkpoint_ensemble_is_refused_on_the_triton_backend(kinds):
    """Triton serves the one model --triton-model names; K members would all be that one model."""
    config = ServeConfig(
        kind="uncertainty", model=kinds["checkpoint_ensemble"].model_dir, backend="triton", triton_url="127.0.0.1:1"
    )
    with pytest.raises(ValueError, match="one model per member"):
        UncertaintyScorer.load(config)
