"""The OpenAI-compatible routes through the proxy, driven by the official `openai` Python client:
real processes (the simulator, or tests/upstream.py where the headers that arrived must be seen),
the exporter's proxy in front, loopback, free ports. The client is pointed at the proxy as a user
would: `OpenAI(base_url="http://<proxy>/v1", api_key=...)`."""

from __future__ import annotations

import json
import sys

import httpx
import openai
import pytest
from openai import OpenAI

from helpers import REPO, Proc, free_port, get_json, parse_samples, wait_for
from test_proxy import APP_KEY, proxy_config

GROUP = "assistants"
CHAT = [{"role": "user", "content": "Write a haiku about queues."}]
REQUESTS = "distribute_proxy_openai_requests_total"
TOKENS = "distribute_proxy_openai_tokens_total"
RESULTS = "distribute_proxy_openai_results_total"


def client(proxy: str, **options) -> OpenAI:
    """The official client as an application builds it; no retries, so that each call is one request."""
    return OpenAI(base_url=f"{proxy}/v1", max_retries=0, timeout=60, **options)


@pytest.fixture
def behind_proxy(tmp_path, simulator, exporter):
    """The simulator (requiring APP_KEY) with the exporter's proxy in front: (sim, exporter, proxy URL)."""
    sim = simulator("--api-key", APP_KEY, "--seed", "11")
    port = free_port()
    exp = exporter(proxy_config(tmp_path, sim.url, port), "--log.level", "debug")
    return sim, exp, f"http://127.0.0.1:{port}"


def sent(sim, path: str) -> list[dict]:
    """What the simulator answered on `path`, as it sent it."""
    return [a for a in get_json(f"{sim.url}/__admin/answers") if a["path"] == path]


def counted(exp, name: str, **labels: str) -> float:
    samples = parse_samples(exp.metrics(), name)
    return sum(v for key, v in samples.items() if dict(key) == labels)


def test_the_openai_client_through_the_proxy_is_answered_as_the_simulator_sent_and_counted_by_model(behind_proxy):
    sim, exp, proxy = behind_proxy
    api = client(proxy, api_key=APP_KEY, default_headers={"X-Distribute-Group": GROUP})  # Bearer <key>

    chat_raw = api.chat.completions.with_raw_response.create(model="Llama-3.1 8B", messages=CHAT)
    images_raw = api.images.with_raw_response.generate(model="SDXL", prompt="a lighthouse at dawn", n=3)
    chat, images = chat_raw.parse(), images_raw.parse()

    # The bytes the client got are the bytes the simulator sent.
    [chat_sent] = sent(sim, "/v1/chat/completions")
    [images_sent] = sent(sim, "/v1/images/generations")
    assert (chat_raw.status_code, chat_raw.http_response.content.decode()) == (200, chat_sent["body"])
    assert (images_raw.status_code, images_raw.http_response.content.decode()) == (200, images_sent["body"])
    # ... and the client read them as OpenAI objects.
    assert chat.object == "chat.completion" and chat.model == "Llama-3.1 8B" and len(chat.choices) == 1
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "tool_calls")
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens > 0
    assert [item.url for item in images.data] == [item["url"] for item in json.loads(images_sent["body"])["data"]]
    assert len(images.data) == 3

    # Counted by model (and group), with the tokens and images the answers carried.
    wait_for(lambda: counted(exp, REQUESTS, kind="images", group=GROUP, model="SDXL", code="200") == 1, 20,
             what="the image generation counted")
    assert counted(exp, REQUESTS, kind="chat", group=GROUP, model="Llama-3.1 8B", code="200") == 1
    assert counted(exp, TOKENS, group=GROUP, model="Llama-3.1 8B", token_type="prompt") == chat.usage.prompt_tokens
    assert counted(exp, TOKENS, group=GROUP, model="Llama-3.1 8B",
                   token_type="completion") == chat.usage.completion_tokens
    assert counted(exp, RESULTS, kind="images", group=GROUP, model="SDXL") == 3
    # No job was made of them: nothing is tracked, nothing polled.
    assert sum(parse_samples(exp.metrics(), "distribute_jobs").values()) == 0

    # Errors by model: the API's 500 for a model it answered before; a refused key; a stream (400).
    sim.faults(error_500_ratio=1.0)
    with pytest.raises(openai.InternalServerError):
        api.chat.completions.create(model="Llama-3.1 8B", messages=CHAT)
    sim.faults(error_500_ratio=0.0)
    with pytest.raises(openai.AuthenticationError):
        client(proxy, api_key="not-the-key").chat.completions.create(model="Llama-3.1 8B", messages=CHAT)
    with pytest.raises(openai.BadRequestError, match="stream"):
        api.chat.completions.create(model="Llama-3.1 8B", messages=CHAT, stream=True)
    # A made-up model name the API never answered 200 for does not become a label value.
    sim.faults(error_500_ratio=1.0)
    with pytest.raises(openai.InternalServerError):
        api.chat.completions.create(model="made-up-model-0x1f", messages=CHAT)
    sim.faults(error_500_ratio=0.0)

    wait_for(lambda: counted(exp, REQUESTS, kind="chat", group=GROUP, model="", code="500") == 1, 20,
             what="the made-up model's 500 counted under model ''")
    assert counted(exp, REQUESTS, kind="chat", group=GROUP, model="Llama-3.1 8B", code="500") == 1
    assert counted(exp, REQUESTS, kind="chat", group="default", model="Llama-3.1 8B", code="401") == 1
    assert counted(exp, REQUESTS, kind="chat", group=GROUP, model="Llama-3.1 8B", code="400") == 1
    assert "made-up-model" not in exp.metrics()
    # Tokens only from the one answered completion.
    assert counted(exp, TOKENS, group=GROUP, model="Llama-3.1 8B", token_type="prompt") == chat.usage.prompt_tokens

    # The key reached the API (the simulator checks it) and appears in no log line and no page.
    for text in (exp.log(), sim.log(), exp.metrics(), httpx.get(exp.url + "/").text):
        assert APP_KEY not in text


def test_the_raw_key_form_and_the_bearer_form_reach_the_api_untouched(tmp_path, exporter):
    """tests/upstream.py echoes the headers it received: the proxy passes `authorization` on as it
    came, `Bearer <key>` from the openai client's default or the raw key as the async API takes it."""
    echo = Proc([sys.executable, str(REPO / "tests" / "upstream.py")])
    try:
        assert echo.popen.stdout is not None
        upstream = f"http://127.0.0.1:{int(echo.popen.stdout.readline().decode().strip())}/headers"
        port = free_port()
        exp = exporter(proxy_config(tmp_path, upstream, port), "--log.level", "debug")
        proxy = f"http://127.0.0.1:{port}"
        received = {}
        for form, api in (("bearer", client(proxy, api_key=APP_KEY)),
                          ("raw", client(proxy, api_key="unused", default_headers={"Authorization": APP_KEY}))):
            answer = api.chat.completions.with_raw_response.create(model="Qwen2.5 7B", messages=CHAT)
            echoed = answer.http_response.json()
            assert echoed["path_qs"] == "/headers/v1/chat/completions"
            received[form] = [v for k, v in echoed["headers"] if k.lower() == "authorization"]
        assert received == {"bearer": [f"Bearer {APP_KEY}"], "raw": [APP_KEY]}
        # Both counted (their 200 answers were not chat completions: read as such, not used).
        wait_for(lambda: counted(exp, REQUESTS, kind="chat", group="default", model="Qwen2.5 7B", code="200") == 2,
                 20, what="both calls counted")
        assert counted(exp, "distribute_proxy_errors_total", reason="observe") == 2
        assert APP_KEY not in exp.log()
    finally:
        echo.stop()


def test_the_raw_key_form_is_accepted_by_the_simulator_through_the_proxy(behind_proxy):
    sim, exp, proxy = behind_proxy
    api = client(proxy, api_key="unused", default_headers={"Authorization": APP_KEY})
    chat = api.chat.completions.create(model="Qwen2.5 7B", messages=CHAT)
    wait_for(lambda: counted(exp, TOKENS, group="default", model="Qwen2.5 7B",
                             token_type="completion") == chat.usage.completion_tokens, 20, what="raw-key call counted")
    assert counted(exp, REQUESTS, kind="chat", group="default", model="Qwen2.5 7B", code="200") == 1
    assert APP_KEY not in exp.log() and APP_KEY not in sim.log()


def test_a_call_on_the_aiohttp_path_is_counted_the_same(behind_proxy):
    """A chunked request body goes to the proxy's aiohttp path; the call is counted as on the fast path."""
    sim, exp, proxy = behind_proxy
    body = json.dumps({"model": "Llama-3.3 70B", "messages": CHAT}).encode()
    answer = httpx.post(f"{proxy}/v1/chat/completions", content=iter([body[:10], body[10:]]),
                        headers={"authorization": APP_KEY, "content-type": "application/json"})
    assert answer.status_code == 200 and answer.request.headers.get("transfer-encoding") == "chunked"
    [was_sent] = sent(sim, "/v1/chat/completions")
    assert answer.text == was_sent["body"]
    usage = answer.json()["usage"]
    wait_for(lambda: counted(exp, REQUESTS, kind="chat", group="default", model="Llama-3.3 70B", code="200") == 1,
             20, what="the aiohttp path's call counted")
    assert counted(exp, TOKENS, group="default", model="Llama-3.3 70B", token_type="prompt") == usage["prompt_tokens"]


def test_a_proxy_timeout_is_counted_by_model_as_504(tmp_path, simulator, exporter):
    """The API never answers (a hang): the application gets the proxy's own 504, counted by model once
    the model was answered 200 before."""
    sim = simulator("--api-key", APP_KEY)
    port = free_port()
    exp = exporter(proxy_config(tmp_path, sim.url, port, timeout_seconds=2))
    api = client(f"http://127.0.0.1:{port}", api_key=APP_KEY)
    api.images.generate(model="FLUX.1 schnell", prompt="a harbour")
    sim.faults(hang_ratio=1.0)
    with pytest.raises(openai.APIStatusError) as failed:
        api.images.generate(model="FLUX.1 schnell", prompt="a harbour")
    assert failed.value.status_code == 504
    wait_for(lambda: counted(exp, REQUESTS, kind="images", group="default", model="FLUX.1 schnell", code="504") == 1,
             20, what="the 504 counted")
    assert counted(exp, RESULTS, kind="images", group="default", model="FLUX.1 schnell") == 1


def test_the_simulator_refuses_as_openai_does_and_takes_both_key_forms(simulator):
    sim = simulator("--api-key", APP_KEY)
    url = f"{sim.url}/v1/chat/completions"
    good = {"model": "Llama-3.1 8B", "messages": CHAT}
    for header in (APP_KEY, f"Bearer {APP_KEY}", f"bearer {APP_KEY}"):
        assert httpx.post(url, json=good, headers={"authorization": header}).status_code == 200, header
    refused = httpx.post(url, json=good, headers={"authorization": f"Bearer {APP_KEY}x"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    bearer = {"authorization": f"Bearer {APP_KEY}"}
    for body, param in (({"messages": CHAT}, "model"), ({"model": "m", "messages": []}, "messages"),
                        ({**good, "stream": True}, "stream"), ({**good, "max_tokens": 0}, "max_completion_tokens"),
                        ({**good, "n": 2}, "n")):
        answer = httpx.post(url, json=body, headers=bearer)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (body, answer.text)
    images = f"{sim.url}/v1/images/generations"
    for body, param in (({"prompt": ""}, "prompt"), ({"prompt": "x", "n": 11}, "n"),
                        ({"prompt": "x", "size": "big"}, "size"),
                        ({"prompt": "x", "response_format": "b64_json"}, "response_format")):
        answer = httpx.post(images, json=body, headers=bearer)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (body, answer.text)
    # The fault knobs apply to these routes too, in OpenAI's error envelope.
    sim.faults(error_429_ratio=1.0, retry_after_seconds=7)
    limited = httpx.post(images, json={"prompt": "x"}, headers=bearer)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "7")
    assert limited.json()["error"]["type"] == "rate_limit_error"
    sim.faults(error_429_ratio=0.0, malformed_ratio=1.0, malformed_kinds="not_json")
    assert httpx.post(images, json={"prompt": "x"}, headers=bearer).headers["content-type"].startswith("text/html")


def test_counting_reads_what_it_can_and_keeps_label_values_bounded():
    """OpenAICounts alone: a stream is counted without usage and is no error; a compressed answer is
    read inflated; an answer that is not the route's shape counts as `observe`; a model name never
    answered 200 stays out of the labels, and the names remembered are bounded."""
    import gzip

    from exporter.metrics.proxy import ProxyStats
    from exporter.sources import proxy_openai
    from exporter.sources.proxy_openai import OpenAICounts, openai_kind

    stats = ProxyStats()
    counts = OpenAICounts(stats, lambda body, encoding: gzip.decompress(body) if encoding == "gzip" else body)
    ask = lambda model, **more: json.dumps({"model": model, "messages": CHAT, **more}).encode()  # noqa: E731
    completion = json.dumps({"object": "chat.completion", "model": "M-1", "choices": [],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).encode()

    assert (openai_kind(b"POST", "/v1/chat/completions?x=1"), openai_kind("POST", "/v1/images/generations")) == \
        ("chat", "images")
    assert openai_kind("GET", "/v1/chat/completions") is None and openai_kind("POST", "/v1/models") is None
    counts.call("chat", "g", lambda: ask("m1")).answered(200, gzip.compress(completion), "gzip")
    counts.call("chat", "g", lambda: ask("m1", stream=True)).answered(200, b"data: {}\n\ndata: [DONE]\n\n")
    counts.call("chat", "g", lambda: ask("m1")).answered(503)
    counts.call("chat", "g", lambda: ask("never-answered")).answered(503)
    counts.call("images", "g", lambda: b'{"prompt": "p"}').answered(200, b'{"created": 1, "data": [{}, {}]}')
    counts.call("images", "g", lambda: b'{"prompt": "p", "model": "i1"}').answered(200, b'{"data": "no"}')
    once = counts.call("chat", "g", lambda: ask("m1"))
    once.answered(200, completion)
    once.answered(502)  # a call is counted once, whatever comes after

    assert dict(stats.openai_requests) == {("chat", "g", "M-1", "200"): 3,  # the stream too: m1 is M-1
                                           ("chat", "g", "M-1", "503"): 1, ("chat", "g", "", "503"): 1,
                                           ("images", "g", "", "200"): 1, ("images", "g", "i1", "200"): 1}
    assert dict(stats.openai_tokens) == {("g", "M-1", "prompt"): 10, ("g", "M-1", "completion"): 14}
    assert dict(stats.openai_results) == {("images", "g", ""): 2}
    assert stats.errors[("observe",)] == 1  # the images answer whose data is no list; the stream is none

    for i in range(proxy_openai.MAX_KNOWN_MODELS + 50):
        counts.call("images", "g", lambda i=i: json.dumps({"prompt": "p", "model": f"n{i}"}).encode()).answered(
            200, b'{"data": []}')
    assert len(counts.models) == proxy_openai.MAX_KNOWN_MODELS
