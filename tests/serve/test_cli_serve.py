"""`trt-gpt serve` as an operator runs it: --api_key (401), --max_queued_requests (429 + Retry-After), SIGTERM
drain (running streams finish, new connections are refused, exit 0 with a summary line), and bad flags as
one-line errors."""
from __future__ import annotations

import json
import threading
import time

import pytest

from trt_gpt import SamplingParams
from trt_gpt.testing import assert_one_line_error, run_cli

openai = pytest.importorskip("openai")
import httpx  # noqa: E402

KEY = "s3cret-key"


def _stream(url: str, body: dict, out: dict, started: threading.Event) -> None:
    """Read a streamed completion to its end; records its text, [DONE] and errors in `out`."""
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    started.set()
                    chunk = json.loads(line[6:])
                    if chunk["choices"]:
                        out["text"] = out.get("text", "") + chunk["choices"][0]["text"]
                    else:
                        out["usage"] = chunk["usage"]
                elif line == "data: [DONE]":
                    out["done"] = True
    except Exception as e:   # noqa: BLE001  (reported to the test)
        out["error"] = repr(e)
    finally:
        started.set()


def test_key_queue_limit_and_drain(served):
    srv = served.start("--api_key", KEY, "--max_batch_size", "1", "--max_queued_requests", "1",
                       "--drain_timeout", "60")
    try:
        # 401 without the key or with another one; /health and /metrics stay open
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="engine", prompt="x", max_tokens=2)
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/health").status_code == 200
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
        assert good.completions.create(model="engine", prompt="x", max_tokens=2).usage.completion_tokens == 2

        # one request runs (max_batch_size 1), one waits (the queue of 1): a third is refused
        body = {"prompt": "Long story:", "max_tokens": 150, "ignore_eos": True, "stream": True, "temperature": 0,
                "stream_options": {"include_usage": True}}
        outs = [{}, {}]
        started = threading.Event()         # either request streams: the other one waits behind it
        threads = [threading.Thread(target=_stream, args=(srv.url, body, o, started)) for o in outs]
        for t in threads:
            t.start()
        assert started.wait(60)
        deadline = time.monotonic() + 30
        while True:
            m = httpx.get(srv.url + "/metrics").text
            if "trtgpt_requests_in_flight 2.0" in m:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as e:
            good.completions.create(model="engine", prompt="x", max_tokens=2)
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.body["code"] == "queue_full"

        # SIGTERM while both stream: they finish, the listener closes, the process ends with status 0
        assert not (outs[0].get("done") and outs[1].get("done"))   # the waiting one has not even started
        srv.proc.send_signal(15)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.url + "/health", timeout=2)
        for t in threads:
            t.join(120)
        for o in outs:
            assert o.get("status") == 200 and o.get("done") and "error" not in o, o
            assert o["usage"]["completion_tokens"] == 150      # every token made and delivered
        ref = served.llm.generate(["Long story:"], SamplingParams(max_tokens=150))[0]
        assert outs[0]["text"] == outs[1]["text"] == served.tok.decode(ref.token_ids)
        assert srv.proc.wait(60) == 0, srv.log()
        assert "serve: stopped, every request finished" in srv.log()
    finally:
        srv.kill()


def test_bad_flags_are_one_line_errors(served, tmp_path):
    proc = run_cli("serve", "--engine_dir", served.engine, "--port", "70000", check=False)
    assert_one_line_error(proc, "--port")
    bad = tmp_path / "t.jinja"
    bad.write_text("{% for m in messages %}")
    proc = run_cli("serve", "--engine_dir", served.engine, "--device", "cpu", "--chat_template", bad, check=False)
    assert_one_line_error(proc, "t.jinja", "chat template")
