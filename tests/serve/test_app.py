"""`trt-gpt serve` through the official `openai` client and raw HTTP: every answer is compared with the same
request run in-process with `LLM.generate` (greedy ones also with HF generate, logprobs with HF's logits in
float64), streamed text with the non-streamed text, and the engine's KV blocks are checked free after a
client goes away."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch

from trt_gpt import SamplingParams

openai = pytest.importorskip("openai")
import httpx  # noqa: E402  (after the skip: the server extra may be absent)

MODEL = "tiny-gpt2"
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}<assistant>"
PROMPTS = ["The quick brown fox", "Once upon a time, in a land", "Ünïcödé prompts — 東京 🙂 work too",
           "A", "Numbers: 1, 2, 3,"]


@pytest.fixture(scope="module")
def server(served):
    tmpl = served.tmp / "chat.jinja"
    tmpl.write_text(TEMPLATE)
    srv = served.start("--served_model_name", MODEL, "--chat_template", str(tmpl))
    yield srv
    assert srv.terminate() == 0, srv.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _params(served, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
            **kw) -> SamplingParams:
    """What the server's defaults make of an OpenAI request (temperature 0: greedy; end at the EOS)."""
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=1 if temperature == 0 else 0,
                          top_p=0.0 if top_p >= 1 else top_p, seed=seed, end_id=served.tok.eos_token_id, **kw)


def _reference(served, prompt, params: SamplingParams, chat: bool = False):
    ids = served.tok.encode(prompt, not chat) if isinstance(prompt, str) else prompt
    out = served.llm.generate([ids], params)[0]
    return out, served.tok.decode(out.token_ids)


def _hf_greedy(served, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = served.hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def _stream_text(chunks) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for ch in chunks:
        for c in ch.choices:
            piece = c.text if hasattr(c, "text") else (c.delta.content or "")
            texts[c.index] = texts.get(c.index, "") + piece
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    return texts, reasons


# ---------------------------------------------------------------------- completions
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_greedy_completion_equals_generate_and_hf(served, client):
    for p in PROMPTS[:3]:
        r = client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0)
        ref, text = _reference(served, p, _params(served, 12, 0.0))
        assert r.choices[0].text == text
        assert r.choices[0].finish_reason == ("length" if len(ref.token_ids) == 12 else "stop")
        assert r.usage.prompt_tokens == len(served.tok.encode(p)) and r.usage.completion_tokens == 12
        assert r.usage.total_tokens == r.usage.prompt_tokens + 12
        assert ref.token_ids == _hf_greedy(served, served.tok.encode(p), 12)


def test_seeded_sampling_n_and_streaming(served, client):
    kw = dict(model=MODEL, prompt=PROMPTS[1], max_tokens=10, temperature=0.9, top_p=0.95, seed=1234, n=3)
    r = client.completions.create(**kw)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    refs = [_reference(served, PROMPTS[1], _params(served, 10, 0.9, 0.95, 1234 + j))[1] for j in range(3)]
    assert texts == refs
    assert len(set(texts)) > 1                               # the seeds of the n choices differ
    assert client.completions.create(**kw).choices[0].text == texts[0]   # reproducible
    streamed, reasons = _stream_text(client.completions.create(**kw, stream=True))
    assert [streamed[j] for j in range(3)] == texts
    assert set(reasons) == {0, 1, 2}


def test_list_prompts_token_ids_and_echo(served, client):
    ids = served.tok.encode(PROMPTS[4])
    r = client.completions.create(model=MODEL, prompt=[PROMPTS[0], PROMPTS[3]], max_tokens=5, temperature=0, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    by = {c.index: c.text for c in r.choices}
    assert by[0] == by[1] == _reference(served, PROMPTS[0], _params(served, 5, 0.0))[1]
    assert by[2] == by[3] == _reference(served, PROMPTS[3], _params(served, 5, 0.0))[1]
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == PROMPTS[4] + _reference(served, ids, _params(served, 6, 0.0))[1]
    streamed, _ = _stream_text(client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0,
                                                          echo=True, stream=True))
    assert streamed[0] == r.choices[0].text


def test_stop_strings_cut_across_tokens(served, client):
    p = PROMPTS[0]
    ref, text = _reference(served, p, _params(served, 24, 0.0))
    pieces = [served.tok.decode([t]) for t in ref.token_ids]
    # a stop string that starts inside one token and ends inside the next
    k = next(i for i in range(2, len(pieces)) if len(pieces[i - 1]) > 1 and len(pieces[i]) > 1)
    at = len("".join(pieces[:k])) - 1
    stop = text[at:at + 3]
    want = text[:text.index(stop)]
    for stream in (False, True):
        r = client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0,
                                      stop=[stop, "never-in-text"], stream=stream)
        got, reasons = _stream_text(r) if stream else ({0: r.choices[0].text}, {0: r.choices[0].finish_reason})
        assert got[0] == want and reasons[0] == "stop"


def test_logprobs_match_hf_float64(served, client):
    p = PROMPTS[1]
    r = client.completions.create(model=MODEL, prompt=p, max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    ids = served.tok.encode(p)
    toks = _hf_greedy(served, ids, 5)
    with torch.no_grad():
        logits = served.hf(torch.tensor([ids + toks])).logits[0, len(ids) - 1:-1].double()
    ref = torch.log_softmax(logits, dim=-1)
    assert lp.tokens == [served.tok.decode([t]) for t in toks]
    for i, t in enumerate(toks):
        assert lp.token_logprobs[i] == pytest.approx(ref[i, t].item(), abs=1e-4)
        vals, idx = ref[i].topk(3)
        top = lp.top_logprobs[i]
        assert sorted(top.values(), reverse=True) == pytest.approx(vals.tolist(), abs=1e-4)
        assert set(top) == {served.tok.decode([j]) for j in idx.tolist()}
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


# ---------------------------------------------------------------------- chat
def test_chat_uses_the_template_file(served, client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    rendered = "<system>Be brief.</system><user>Hello there</user><assistant>"
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    ref, text = _reference(served, rendered, _params(served, 8, 0.0), chat=True)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(served.tok.encode(rendered, False))
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed, reasons = _stream_text(chunks)
    assert streamed[0] == text and reasons[0] == r.choices[0].finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_chat_logprobs_seed_and_n(served, client):
    msgs = [{"role": "user", "content": "Tell me a story"}]
    rendered = "<user>Tell me a story</user><assistant>"
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0.8, seed=7, n=2,
                                       logprobs=True, top_logprobs=2)
    for c in r.choices:
        _, text = _reference(served, rendered, _params(served, 6, 0.8, seed=7 + c.index), chat=True)
        assert c.message.content == text
        content = c.logprobs.content
        assert len(content) == 6 and all(len(e.top_logprobs) == 2 for e in content)
        assert all(e.top_logprobs[0].logprob >= e.logprob - 1e-6 for e in content)
        assert all(bytes(e.bytes).decode("utf-8", "replace") == e.token for e in content)


def test_beam_search(served, client):
    r = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=6, n=2, best_of=2,
                                  extra_body={"use_beam_search": True})
    ref = served.llm.generate([served.tok.encode(PROMPTS[0])],
                              SamplingParams(max_tokens=6, num_beams=2, end_id=served.tok.eos_token_id))[0]
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == ref.beam_texts


# ---------------------------------------------------------------------- concurrency and cancellation
def test_concurrent_streams_each_get_exactly_their_tokens(served, server):
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + (3 * i) % 13, 100 + i) for i in range(16)]

    async def one(prompt: str, n: int, seed: int) -> str:
        text = ""
        async for ch in await aclient.completions.create(model=MODEL, prompt=prompt, max_tokens=n, seed=seed,
                                                         temperature=1.0, stream=True):
            text += ch.choices[0].text if ch.choices else ""
        return text

    async def main():
        return await asyncio.gather(*(one(*j) for j in jobs))

    got = asyncio.run(main())
    for (prompt, n, seed), text in zip(jobs, got):
        assert text == _reference(served, prompt, _params(served, n, 1.0, seed=seed))[1]


def _metric(server, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when a labelled one has none yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics").text
    found = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
             if s.name == name and labels.items() <= s.labels.items()]
    if not found and not labels:
        raise KeyError(name)
    return sum(found)


def test_disconnect_cancels_and_frees_blocks(server):
    body = {"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 120, "ignore_eos": True, "stream": True}
    before = _metric(server, "trtgpt_request_finished_total", finish_reason="cancelled")
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", server.url + "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in got)
            assert _metric(server, "trtgpt_kv_cache_blocks_used") > 0
            assert _metric(server, "trtgpt_requests_running") == 1
    deadline = time.monotonic() + 10
    while _metric(server, "trtgpt_kv_cache_blocks_used") > 0:
        assert time.monotonic() < deadline, "blocks still held after the client left"
        time.sleep(0.05)
    assert _metric(server, "trtgpt_requests_running") == 0
    assert _metric(server, "trtgpt_requests_in_flight") == 0
    assert _metric(server, "trtgpt_request_finished_total", finish_reason="cancelled") == before + 1


def test_disconnect_while_waiting_for_a_plain_answer_cancels(server):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 150, "ignore_eos": True}
    before = _metric(server, "trtgpt_request_finished_total", finish_reason="cancelled")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(10, read=0.3))
    deadline = time.monotonic() + 10
    while _metric(server, "trtgpt_request_finished_total", finish_reason="cancelled") < before + 1:
        assert time.monotonic() < deadline, "the request ran on after its client left"
        time.sleep(0.05)
    assert _metric(server, "trtgpt_kv_cache_blocks_used") == 0


# ---------------------------------------------------------------------- errors and metrics
@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "temperature": 5}, "temperature"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "logit_bias": {"1": 2}}, "logit_bias"),
    ({"prompt": "x", "max_tokens": 1000}, "max_tokens"),
    ({"prompt": "word " * 200, "max_tokens": 4}, "prompt"),
    ({"prompt": [[1, 2], [3, 99999999]]}, "prompt"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"max_tokens": 3}, "prompt"),
    ({"prompt": "x", "model": "gpt-17"}, "model"),
])
def test_bad_requests_are_400_naming_the_field(server, body, param):
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == (404 if param == "model" else 400), r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"


def test_malformed_json_and_chat_errors(server, client):
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "x",',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


def test_metrics_parse_and_count(server, client):
    from prometheus_client.parser import text_string_to_metric_families

    client.completions.create(model=MODEL, prompt="count me", max_tokens=4, temperature=0)
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    for name in ("trtgpt_requests_running", "trtgpt_requests_waiting", "trtgpt_kv_cache_blocks_used",
                 "trtgpt_prompt_tokens", "trtgpt_generation_tokens", "trtgpt_time_to_first_token_seconds",
                 "trtgpt_time_per_output_token_seconds", "trtgpt_requests"):
        assert name in fams, sorted(fams)
    samples = {s.name: s.value for f in fams.values() for s in f.samples if not s.labels}
    assert samples["trtgpt_generation_tokens_total"] >= 4
    assert samples["trtgpt_time_to_first_token_seconds_count"] >= 1
    ok = [s for s in fams["trtgpt_requests"].samples
          if s.labels.get("endpoint") == "/v1/completions" and s.labels.get("status") == "200"]
    assert ok and ok[0].value >= 1
    bad = [s for s in fams["trtgpt_requests"].samples if s.labels.get("status") == "400"]
    assert bad
    json.dumps(samples)   # plain numbers


def test_bench_openai_backend(served, server):
    """`trt-gpt bench --backend openai` against the server: every request streams exactly output_len tokens."""
    from trt_gpt.testing import run_cli

    proc = run_cli("bench", "--backend", "openai", "--url", server.url, "--engine_dir", served.engine,
                   "--num_requests", "6", "--concurrency", "3", "--input_len", "8", "--output_len", "5",
                   "--warmup", "1", "--json")
    r = json.loads(proc.stdout)["trt_gpt"]
    assert r["errors"] == 0 and r["num_requests"] == 6 and r["output_tokens"] == 30
    assert r["ttft_ms"]["p50"] > 0 and r["tpot_ms"]["p50"] > 0 and r["output_tok_per_s"] > 0
