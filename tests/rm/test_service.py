"""The reward-model service: scoring, calibration, baseline cache, OpenRLHF protocol, errors, queue mode."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading

import httpx
import pytest
import redis

from cgpo.services.common.backends import LocalBackend
from cgpo.services.common.batching import BatchPolicy
from cgpo.services.common.errors import UnknownModelError
from cgpo.services.common.keys import Keys
from cgpo.services.common.schemas import ErrorEnvelope, ModelList, RMItem, ScoreResponse
from cgpo.services.common.settings import ServiceSettings
from cgpo.services.common.worker import Worker
from cgpo.services.rm.app import SERVICE, build_app, make_cache
from cgpo.services.rm.calibration import MemoryCache
from cgpo.services.rm.config import RMConfig
from cgpo.services.rm.handler import RMHandler
from cgpo.services.rm.model import RewardModel
from tests.procs import worker_thread

PROMPT = "What is the capital of France?"
BASELINE = "The capital of France is Paris."


@contextlib.asynccontextmanager
async def serve(settings: ServiceSettings, config: RMConfig):
    app = build_app(settings, config)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def handler_of(client) -> RMHandler:
    return client.app.state.backend.handler


def direct(rm_path, prompt: str, response: str) -> float:
    model = RewardModel("x", str(rm_path))
    model.load()
    return model.score([model.encode(prompt, response).ids])[0]


def test_score_returns_raw_and_calibrated_rewards(rm_path):
    config = RMConfig(models=(f"helpful={rm_path}",))

    async def scenario():
        async with serve(ServiceSettings(), config) as client:
            return (await client.post("/v1/score", json={"model": "helpful", "items": [
                {"prompt": PROMPT, "response": "Paris.", "baseline": BASELINE},
                {"prompt": PROMPT, "response": BASELINE, "baseline": BASELINE},
                {"prompt": PROMPT, "response": "Lyon."},
            ]})).json()

    a, same, raw = ScoreResponse.model_validate(asyncio.run(scenario())).results
    assert a.reward == pytest.approx(direct(rm_path, PROMPT, "Paris."), abs=1e-5)
    assert a.baseline_reward == pytest.approx(direct(rm_path, PROMPT, BASELINE), abs=1e-5)
    assert a.calibrated == pytest.approx(1 / (1 + math.exp(-(a.reward - a.baseline_reward))), abs=1e-9)
    assert same.calibrated == 0.5  # the baseline itself
    assert raw.baseline_reward is None and raw.calibrated is None and raw.truncated is False


def test_a_baseline_is_scored_once_across_many_requests(rm_path):
    config = RMConfig(models=(f"helpful={rm_path}",))

    async def scenario():
        async with serve(ServiceSettings(), config) as client:
            model = handler_of(client).models["helpful"]
            start = model.sequences_scored
            responses = [f"Answer number {i}: Paris." for i in range(12)]
            calls = [client.post("/v1/score", json={"model": "helpful", "items": [
                {"prompt": PROMPT, "response": r, "baseline": BASELINE}]}) for r in responses]
            results = [r.json()["results"][0] for r in await asyncio.gather(*calls)]
            again = (await client.post("/v1/score", json={"model": "helpful", "items": [
                {"prompt": PROMPT, "response": responses[0], "baseline": BASELINE}] * 3})).json()["results"]
            return results, again, model.sequences_scored - start

    results, again, scored = asyncio.run(scenario())
    # 12 distinct responses + the baseline once; the repeated request scores its (identical) item once more
    assert scored == 12 + 1 + 1
    assert len({r["baseline_reward"] for r in results + again}) == 1
    assert again[0] == again[1] == again[2]


def test_openrlhf_get_reward_round_trip(rm_path):
    config = RMConfig(models=(f"helpful={rm_path}", f"safety={rm_path}"))
    texts = ["<|user|>\nHi</s>\n<|assistant|>\nHello! How can I help?</s>", "plain text to score"]

    async def scenario():
        async with serve(ServiceSettings(), config) as client:
            answer = await client.post("/get_reward", json={"query": texts, "prompts": ["<|user|>\nHi", ""],
                                                            "labels": ["x", "y"]})
            named = await client.post("/get_reward?model=safety", json={"query": texts})
            mismatch = await client.post("/get_reward", json={"query": texts, "prompts": ["only one"]})
            return answer, named, mismatch

    answer, named, mismatch = asyncio.run(scenario())
    body = answer.json()
    model = RewardModel("x", str(rm_path))
    model.load()
    expected = [model.score([model.encode_text(t).ids])[0] for t in texts]
    assert body["rewards"] == pytest.approx(expected, abs=1e-5) and body["scores"] == body["rewards"]
    assert body["extra_logs"]["truncated"] == [0.0, 0.0]
    assert named.json()["rewards"] == pytest.approx(expected, abs=1e-5)
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == "bad_request"


def test_openrlhf_payloads_score_as_v1_score_scores_the_same_conversation(rm_path):
    """What OpenRLHF's executor posts to ``--remote_rm_url``: one query per request, the chat-formatted
    prompt and the generated ids decoded with their special tokens (so the text starts with BOS and, when
    the response finished, ends with EOS; left padding when batched), and ``labels`` that may be null.
    Each must score as ``/v1/score`` scores the same prompt and response."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_path)
    config = RMConfig(models=(f"helpful={rm_path}",))
    prompt = "Write a short note about the sea."
    prompt_text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=False)
    prompt_ids = tok(prompt_text, add_special_tokens=False).input_ids
    finished, cut = "The sea is calm today.", "Waves"
    cases = {  # response text as /v1/score gets it -> the ids the policy generated after the prompt
        finished: tok(finished, add_special_tokens=False).input_ids + [tok.eos_token_id],
        cut: tok(cut, add_special_tokens=False).input_ids,  # stopped at max_new_tokens: no EOS
    }
    payloads = []
    for response, ids in cases.items():
        for pad in (0, 3):
            query = tok.decode([tok.pad_token_id] * pad + prompt_ids + ids, skip_special_tokens=False)
            payloads.append((response, {"query": [query], "prompts": [prompt_text], "labels": None}))
    assert payloads[0][1]["query"][0].startswith(tok.bos_token)

    async def scenario():
        async with serve(ServiceSettings(), config) as client:
            scored = await client.post("/v1/score", json={"model": "helpful", "items": [
                {"prompt": prompt, "response": response} for response in cases]})
            rewards = [await client.post("/get_reward", json=body) for _, body in payloads]
            return scored, rewards

    scored, rewards = asyncio.run(scenario())
    expected = dict(zip(cases, [r["reward"] for r in scored.json()["results"]], strict=True))
    assert len(set(expected.values())) == 2
    for (response, _), answer in zip(payloads, rewards, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["rewards"] == pytest.approx([expected[response]], abs=1e-5), response


def test_models_list_and_errors(rm_path):
    config = RMConfig(models=(f"helpful={rm_path}",), max_length=64)

    async def scenario():
        async with serve(ServiceSettings(max_items=4), config) as client:
            return (await client.get("/v1/models"),
                    await client.post("/v1/score", json={"model": "nope", "items": [{"prompt": "p", "response": "r"}]}),
                    await client.post("/v1/score", json={"model": "helpful", "items": []}),
                    await client.post("/v1/score", json={"model": "helpful", "items": [{"prompt": "p"}]}),
                    await client.post("/v1/score", json={"model": "helpful",
                                                         "items": [{"prompt": "p", "response": "r"}] * 5}),
                    await client.post("/v1/score", json={"model": "helpful", "items": [
                        {"prompt": "Tell me about Rome. " * 40, "response": "It is old."}]}))

    listed, unknown, empty, missing, many, long = asyncio.run(scenario())
    assert listed.json() == {"models": [{"name": "helpful", "max_length": 64, "dtype": "float32", "device": "cpu"}]}
    assert [m.name for m in ModelList.model_validate(listed.json()).models] == ["helpful"]
    assert unknown.status_code == 404
    assert ErrorEnvelope.model_validate(unknown.json()).error.detail["known"] == ["helpful"]
    assert empty.status_code == 422 and missing.status_code == 422 and many.status_code == 413
    assert long.status_code == 200 and ScoreResponse.model_validate(long.json()).results[0].truncated is True


def test_an_item_whose_model_the_worker_lacks_answers_an_error_and_its_batch_mates_are_scored(rm_path):
    handler = RMHandler.from_config(RMConfig(models=(f"helpful={rm_path}",)), MemoryCache(16))
    handler.setup()
    scored, unknown, again = handler.predict([RMItem(model="helpful", prompt=PROMPT, response="Paris."),
                                              RMItem(model="gone", prompt=PROMPT, response="Paris."),
                                              RMItem(model="helpful", prompt=PROMPT, response="Lyon.")])
    assert scored.error is None and scored.reward == pytest.approx(direct(rm_path, PROMPT, "Paris."), abs=1e-5)
    assert again.error is None and again.reward == pytest.approx(direct(rm_path, PROMPT, "Lyon."), abs=1e-5)
    assert unknown.reward is None and UnknownModelError.matches(unknown.error.code)
    assert unknown.error.detail == {"unknown": "gone", "known": ["helpful"]}


def test_a_gateway_model_its_backend_lacks_is_answered_per_item_not_as_a_failed_job(rm_path):
    """The gateway lists a model (``gone``) its backend's handler does not serve: ``/v1/score`` answers
    each item with the error, and ``/get_reward``, which cannot say that one reward is missing, the typed error."""
    config = RMConfig(models=(f"helpful={rm_path}", f"gone={rm_path}"))
    handler = RMHandler.from_config(RMConfig(models=(f"helpful={rm_path}",)), MemoryCache(16))
    backend = LocalBackend(handler, BatchPolicy())

    async def scenario():
        app = build_app(ServiceSettings(), config, backend=backend)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                return (await client.post("/v1/score", json={"model": "gone", "items": [
                            {"prompt": PROMPT, "response": "Paris."}] * 2}),
                        await client.post("/v1/score", json={"model": "helpful", "items": [
                            {"prompt": PROMPT, "response": "Paris."}]}),
                        await client.post("/get_reward?model=gone", json={"query": ["Paris."]}))

    gone, helpful, reward = asyncio.run(scenario())
    assert gone.status_code == 200
    unscored = ScoreResponse.model_validate(gone.json()).results
    assert [r.error.code for r in unscored] == [UnknownModelError.code] * 2
    assert all(r.reward is None for r in unscored)
    assert helpful.status_code == 200 and "error" not in helpful.json()["results"][0]  # absent, not null
    assert ScoreResponse.model_validate(helpful.json()).results[0].error is None
    assert reward.status_code == 404
    assert ErrorEnvelope.model_validate(reward.json()).error.code == UnknownModelError.code


def test_build_app_without_models_is_a_clear_error():
    with pytest.raises(ValueError, match="--model NAME=PATH"):
        build_app(ServiceSettings(), RMConfig())


def test_queue_mode_with_a_shared_redis_baseline_cache(rm_path, redis_url):
    settings = ServiceSettings(redis_url=redis_url)
    config = RMConfig(models=(f"helpful={rm_path}",))
    handler = RMHandler.from_config(config, make_cache(settings, config))
    worker = Worker(handler, settings, SERVICE)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    async def scenario():
        async with serve(settings, config) as client:
            first = await client.post("/v1/score", json={"model": "helpful", "items": [
                {"prompt": PROMPT, "response": "Paris.", "baseline": BASELINE}]})
            second = await client.post("/v1/score", json={"model": "helpful", "items": [
                {"prompt": PROMPT, "response": "Paris!", "baseline": BASELINE}]})
            return first.json()["results"][0], second.json()["results"][0]

    try:
        first, second = asyncio.run(scenario())
    finally:
        worker.stop()
        thread.join(5)
    assert first["baseline_reward"] == second["baseline_reward"]
    assert first["reward"] == pytest.approx(direct(rm_path, PROMPT, "Paris."), abs=1e-5)
    cached = list(redis.Redis.from_url(redis_url).scan_iter(match=Keys(SERVICE).baseline_prefix + "*"))
    assert len(cached) == 1
    assert handler.models["helpful"].sequences_scored == 3  # 2 responses + 1 baseline


def test_reward_client_embedded_matches_direct_scores(rm_path):
    from cgpo.services.rm.embedded import embedded_reward_models

    async def scenario():
        async with embedded_reward_models({"helpful": str(rm_path)}) as client:
            listed = await client.models()
            results = await client.score("helpful", [{"prompt": PROMPT, "response": "Paris.", "baseline": BASELINE}])
            with pytest.raises(UnknownModelError):
                await client.score("nope", [{"prompt": PROMPT, "response": "x"}])
            return listed, results

    listed, [result] = asyncio.run(scenario())
    assert [m.name for m in listed.models] == ["helpful"]
    assert result.reward == pytest.approx(direct(rm_path, PROMPT, "Paris."), abs=1e-5)
    assert result.calibrated == pytest.approx(1 / (1 + math.exp(-(result.reward - result.baseline_reward))))


@pytest.mark.parametrize("mode", ["embedded", "queue"])
def test_text_json_cannot_carry_is_refused_and_never_fails_batch_mates(mode, rm_path, redis_url):
    settings = ServiceSettings(redis_url=redis_url if mode == "queue" else None, batch_max_wait_ms=50,
                               request_timeout_s=20)
    config = RMConfig(models=(f"helpful={rm_path}",))
    headers = {"Content-Type": "application/json"}
    score_body = '{"model": "helpful", "items": [{"prompt": "p", "response": "bad \\udc80"}]}'
    reward_body = '{"query": ["fine", "bad \\ud800"]}'

    async def scenario():
        async with serve(settings, config) as client:
            worker = contextlib.nullcontext()
            if mode == "queue":
                handler = RMHandler.from_config(config, make_cache(settings, config))
                worker = worker_thread(handler, settings, SERVICE)
            with worker:
                return await asyncio.gather(
                    client.post("/v1/score", content=score_body, headers=headers),
                    client.post("/get_reward", content=reward_body, headers=headers),
                    client.post("/v1/score", json={"model": "helpful", "items": [{"prompt": "p", "response": "ok"}]}))

    bad_score, bad_reward, good = asyncio.run(scenario())
    for bad, where in ((bad_score, "items.0.response"), (bad_reward, "query.1")):
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        assert where in bad.json()["error"]["detail"][0]["msg"]
    assert good.status_code == 200 and good.json()["results"][0]["reward"] == pytest.approx(
        direct(rm_path, "p", "ok"), abs=1e-5)
