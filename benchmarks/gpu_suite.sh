#!/usr/bin/env bash
# The GPU suite behind docs/benchmarks.md: correctness on the GPU first, then each workload of its tables, side
# by side with HF transformers. Usage (on the GPU machine, repo root): bash benchmarks/gpu_suite.sh OUTDIR [PART],
# OUTDIR by convention benchmarks/results/<gpu>/<date>-<what>/
# PART (one, or several comma-separated, run in this order of the script): check | kcheck | gemv | tune | step | timeline | pdl | profile | ifb | small | b1hf | final | large | quant | lora | serve | sweep | all (default). Writes OUTDIR/<name>.json and prints a table at the end.
# `check` is the GPU-only paths' test run (CUDA-graph capture, PDL, bf16 kernels, the fused layers): tests/gpu,
# every kernel test, the fused-layer model tests and the runtime suite with the engine on CUDA; it ends with
# one line "gpu check: PASSED" or "gpu check: FAILED (...)" and exits non-zero on a failure.
set -uo pipefail
OUT=${1:-benchmarks/results}; PART=${2:-all}
want() { [[ ",$PART," == *",$1,"* ]]; }   # PART may list several: step,large
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD/core:$PWD/plugins:$PWD/variants/gpt2:$PWD/variants/starcoder:$PWD/variants/santacoder:$PWD/variants/granite:$PWD/variants/starcoder2:$PWD/variants/gpt_next${PYTHONPATH:+:$PYTHONPATH}
# entry points need dist-info: install the packages in place without touching dependencies
for p in . variants/gpt2 variants/starcoder variants/santacoder variants/granite variants/starcoder2 variants/gpt_next; do
  pip install -q --no-deps --no-build-isolation -e "$p" >/tmp/pip.log 2>&1 || { echo "install of $p failed:"; tail -2 /tmp/pip.log; }
done
# where an install failed, register the variants from the source tree instead of entry points
export TRT_GPT_PLUGIN_MODULES=trt_gpt_gpt2,trt_gpt_starcoder,trt_gpt_santacoder,trt_gpt_granite,trt_gpt_starcoder2,trt_gpt_gpt_next
T="python3 -m trt_gpt.cli.main"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

engine() {  # name vocab hidden layers heads kv ffn pos_type max_input max_seq [max_batch]
  $T config --vocab_size $2 --hidden_size $3 --num_hidden_layers $4 --num_attention_heads $5 \
     --num_key_value_heads $6 --intermediate_size $7 --position_embedding_type $8 --max_position_embeddings ${10} \
     --hidden_act gelu --dtype float16 --output_path /tmp/cfg-$1.json >/dev/null 2>&1
  $T build --model_config /tmp/cfg-$1.json --output_dir /tmp/eng-$1 --max_input_len $9 --max_seq_len ${10} \
     --max_batch_size ${11:-256} --max_num_tokens 8192 --overwrite >/dev/null 2>&1
}
bench() {  # name engine extra-args...
  local name=$1 eng=$2; shift 2
  echo "== $name: trt-gpt bench $*"
  timeout ${BENCH_TIMEOUT:-240} $T bench --engine_dir /tmp/eng-$eng --output "$OUT/$name.json" "$@" 2>&1 | tail -3
}

if want check || want all; then
  failed=()
  python3 -m pytest tests/gpu tests/kernels tests/model 2>&1 | tee "$OUT/pytest-gpu.log" | grep -v "^W1" | tail -40
  [[ ${PIPESTATUS[0]} == 0 ]] || failed+=("tests/gpu tests/kernels tests/model: $OUT/pytest-gpu.log")
  # the runtime suite with the engine on the GPU (HF stays the oracle on CPU): real CUDA graphs + overlap
  TRT_GPT_TEST_DEVICE=cuda python3 -m pytest tests/runtime 2>&1 | tee "$OUT/pytest-runtime-cuda.log" | tail -5
  [[ ${PIPESTATUS[0]} == 0 ]] || failed+=("tests/runtime on cuda: $OUT/pytest-runtime-cuda.log")
  if [[ ${#failed[@]} == 0 ]]; then
    echo "gpu check: PASSED on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  else
    echo "gpu check: FAILED (${failed[*]})"
    [[ $PART == check ]] && exit 1
  fi
fi
if want kcheck; then  # the decode-attention and embedding kernels only (a quick check after a change)
  timeout ${KCHECK_TIMEOUT:-120} python3 -m pytest -x tests/kernels/test_triton_attention.py tests/kernels/test_triton_embed.py \
    tests/kernels/test_triton_argmax.py -k "${KCHECK_FILTER:-decode or split or embed or pick or argmax}" 2>&1 \
    | tee "$OUT/pytest-kcheck.log" | tail -3
fi
if want b1hf; then  # the two small batch-1 workloads alone, HF eager beside each
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  bench sc1b_b1 santacoder --num_requests 6 --concurrency 1 --input_len 128 --output_len 128 --compare_hf --hf_batch_size 1 --hf_eager
  bench gpt2m_b1 gpt2m --num_requests 8 --concurrency 1 --input_len 128 --output_len 128 --compare_hf --hf_batch_size 1 --hf_eager
fi
if want gemv; then
  python3 benchmarks/gemv.py --out "$OUT/gemv.json" --budget-s ${GEMV_BUDGET:-180} 2>&1 | tee "$OUT/gemv.log" | tail -70
fi
if want tune; then  # batch-1 decode graphs: bench, tune the GEMV tiles in place, bench again
  # TUNE_QUICK=1: no kernel tests and no benches around the tune (its "start:" line is the untuned step time)
  [[ ${TUNE_QUICK:-0} == 1 ]] || timeout 200 python3 -m pytest -x tests/kernels/test_triton_attention.py tests/kernels/test_triton_gemv.py 2>&1 | tail -3
  MODELS=${TUNE_MODELS:-santacoder gpt2m}
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  for m in $MODELS; do
    [[ ${TUNE_QUICK:-0} == 1 ]] || bench tune_pre_${m}_b1 $m --num_requests 4 --concurrency 1 --input_len 128 --output_len 128
    python3 benchmarks/tune_decode.py /tmp/eng-$m --out "$OUT/gemv-tuned-$m.json" --budget-s ${TUNE_BUDGET:-150} \
      ${SPLIT_SWEEP:+--split-sweep $SPLIT_SWEEP} 2>&1 | grep -v "^W1" | tail -16
    [[ ${TUNE_QUICK:-0} == 1 ]] || TRT_GPT_GEMV_CONFIGS="$OUT/gemv-tuned-$m.json" bench tune_post_${m}_b1 $m --num_requests 4 --concurrency 1 --input_len 128 --output_len 128
  done
  # one table for every tuned model (their shapes differ), for TRT_GPT_GEMV_CONFIGS in later parts
  python3 - "$OUT" $MODELS <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1]); table = {}
for m in sys.argv[2:]:
    f = out / f"gemv-tuned-{m}.json"
    if f.exists():
        table.update(json.loads(f.read_text()))
(out / "gemv-tuned.json").write_text(json.dumps(table, indent=1))
print(f"merged GEMV table: {len(table)} shapes -> {out / 'gemv-tuned.json'}")
PY
fi
if want step; then  # batch-1 decode: end-to-end bench and the graph's step time (no tuning); SPLIT_SWEEP, ARGMAX_AB=1, MHA_AB=1, GAP_PROBE=1 (GAP_TRACE=1) add A/B timings
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  for m in ${TUNE_MODELS:-santacoder gpt2m}; do
    [[ ${STEP_BENCH:-1} == 1 ]] && bench step_${m}_b1 $m --num_requests 4 --concurrency 1 --input_len 128 --output_len 128
    python3 benchmarks/tune_decode.py /tmp/eng-$m --out /tmp/step-$m.json --budget-s 0 ${SPLIT_SWEEP:+--split-sweep $SPLIT_SWEEP} \
      ${ARGMAX_AB:+--argmax-ab} ${MHA_AB:+--mha-ab} ${GAP_PROBE:+--gap-probe} \
      ${GAP_TRACE:+--gap-trace /tmp/trace-$m.json} 2>&1 | grep -E "^start:|^decode split|^picks from|^PDL release|^MHA|^gap|Error|error"
  done
fi
if want timeline; then  # where a batch-1 request's time goes: TTFT, decode steps, GPU idle between them (TIMELINE_MODELS)
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  for m in ${TIMELINE_MODELS:-gpt2m}; do
    bench tl_${m}_b1 $m --num_requests 8 --concurrency 1 --input_len 128 --output_len 128
    python3 benchmarks/request_timeline.py /tmp/eng-$m --trace "$OUT/timeline-$m.json.gz" 2>&1 | grep -v "^W1" | tee "$OUT/timeline-$m.log"
  done
fi
if want ifb; then  # the large-batch runs alone, without HF (quick look while tuning)
  engine sc1024 49280 2048 24 16 1 8192 learned_absolute 2048 4096 1024
  bench q_sc1b_ifb1024 sc1024 --num_requests 1024 --input_len 128 --output_len 128
  engine sc2_7b 49152 4608 32 36 4 18432 rope_gpt_neox 2048 4096
  bench q_sc2_7b_ttft2048 sc2_7b --num_requests 4 --concurrency 1 --input_len 2048 --output_len 2 --warmup 1
fi
if want pdl; then  # batch-1 decode with programmatic dependent launch on and off (no HF)
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  engine sc2_7b 49152 4608 32 36 4 18432 rope_gpt_neox 2048 4096
  for pdl in 1 0; do
    TRT_GPT_PDL=$pdl bench pdl${pdl}_sc1b_b1 santacoder --num_requests 4 --concurrency 1 --input_len 128 --output_len 128
    TRT_GPT_PDL=$pdl bench pdl${pdl}_gpt2m_b1 gpt2m --num_requests 4 --concurrency 1 --input_len 128 --output_len 128
    TRT_GPT_PDL=$pdl bench pdl${pdl}_sc2_7b_b1 sc2_7b --num_requests 2 --concurrency 1 --input_len 128 --output_len 128
  done
fi
if want profile; then  # where a decode step's time goes: per phase, and the kernels of a batch-1 step
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  python3 benchmarks/profile_decode.py /tmp/eng-santacoder 1 --trace 2>&1 | grep -v "^W1" | tee "$OUT/profile.log" | head -24
  python3 benchmarks/profile_decode.py /tmp/eng-gpt2m 1 2>&1 | tail -3
  python3 benchmarks/profile_decode.py /tmp/eng-santacoder 256 2>&1 | tail -3
fi
if want small; then
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  bench sc1b_b1 santacoder --num_requests 8 --concurrency 1 --input_len 128 --output_len 128 --compare_hf --hf_batch_size 1
  bench gpt2m_b1 gpt2m --num_requests 8 --concurrency 1 --input_len 128 --output_len 128 --compare_hf --hf_batch_size 1
  bench sc1b_ifb1024 santacoder --num_requests 1024 --input_len 128 --output_len 128 --compare_hf --hf_batch_size 64 --hf_eager
fi
if want b1ab; then  # batch-1 decode without HF, for A/B runs of two trees
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  bench sc1b_b1 santacoder --num_requests 6 --concurrency 1 --input_len 128 --output_len 128
  bench gpt2m_b1 gpt2m --num_requests 8 --concurrency 1 --input_len 128 --output_len 128
fi
if want ifbab; then  # 1,024-request in-flight batching without HF, for A/B runs of two trees
  engine sc1024 49280 2048 24 16 1 8192 learned_absolute 2048 4096 1024
  bench sc1b_ifb1024 sc1024 --num_requests 1024 --input_len 128 --output_len 128
fi
if want final || want all; then  # the 1B-class workloads, HF eager beside each (HF's compiled path crashed here)
  engine santacoder 49280 2048 24 16 1 8192 learned_absolute 2048 4096
  engine gpt2m 50257 1024 24 16 16 4096 learned_absolute 1024 1024
  engine sc1024 49280 2048 24 16 1 8192 learned_absolute 2048 4096 1024
  bench sc1b_b1 santacoder --num_requests 6 --concurrency 1 --input_len 128 --output_len 128 --compare_hf --hf_batch_size 1 --hf_eager
  bench gpt2m_b1 gpt2m --num_requests 8 --concurrency 1 --input_len 128 --output_len 128 --compare_hf --hf_batch_size 1 --hf_eager
  bench sc1b_ifb1024 sc1024 --num_requests 1024 --input_len 128 --output_len 128 --compare_hf --hf_batch_size 64 --hf_eager
fi
if want large || want all; then  # the 7B workloads (HF's 7B on this machine did not finish in a call)
  engine sc2_7b 49152 4608 32 36 4 18432 rope_gpt_neox 2048 4096
  bench sc2_7b_b1 sc2_7b --num_requests 4 --concurrency 1 --input_len 128 --output_len 128
  bench sc2_7b_ttft2048 sc2_7b --num_requests 4 --concurrency 1 --input_len 2048 --output_len 2 --warmup 1
fi
if want quant; then  # every weight format beside fp16 (StarCoder2-7B shape; one process and engine load a format)
  for f in fp16 w4a16_gptq w8a16 fp8+fp8 w8a8_sq+int8; do
    timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/formats.py --shape sc2_7b --formats $f --workloads b1 c16 c64 r1024 ttft2048 \
      --max_batch_size 1024 --out "$OUT/quant" 2>&1 | grep -v "^W1"
  done
  timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/formats.py --shape sc1b --formats fp16 w4a16_gptq --workloads b1 --out "$OUT/quant" 2>&1 | grep -v "^W1"
fi
if want lora; then  # 8 rank-16 adapters at 64 in flight, one adapter at batch 1, against the same shape without
  for f in fp16 w4a16_gptq; do
    timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/formats.py --shape sc1b --formats $f --workloads b1 c64 b1+lora1 c64+lora8 \
      --kv_cache_free_gpu_memory_fraction 0.4 --out "$OUT/lora" 2>&1 | grep -v "^W1"
  done
fi
if want serve; then  # 1,024 requests and low-load TTFT through HTTP against in-process (SantaCoder-1B shape)
  # the server's packages, where the machine lacks them: wheels in .whl/ (docs/serving.md)
  if ! python3 -c "import fastapi, uvicorn" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
  fi
  engine sc1024 49280 2048 24 16 1 8192 learned_absolute 2048 4096 1024
  bench serve_inproc_r1024 sc1024 --num_requests 1024 --input_len 128 --output_len 128
  bench serve_inproc_c1 sc1024 --num_requests 16 --concurrency 1 --input_len 128 --output_len 128
  $T serve --engine_dir /tmp/eng-sc1024 --tokenizer_dir ${SERVE_TOKENIZER:?a tokenizer dir (any GPT-2 BPE)} --port 8000 \
    --max_queued_requests 4096 > "$OUT/serve.log" 2>&1 &
  server=$!
  for i in $(seq 1 120); do curl -s localhost:8000/health >/dev/null && break; sleep 1; done
  for w in "c1 --num_requests 16 --concurrency 1" "r1024 --num_requests 1024"; do
    set -- $w
    timeout ${BENCH_TIMEOUT:-240} $T bench --backend openai --url http://127.0.0.1:8000 "${@:2}" --input_len 128 --output_len 128 \
      --output "$OUT/serve_http_$1.json" 2>&1 | tail -1
  done
  kill $server 2>/dev/null; wait $server
fi
if want sweep; then  # throughput and TPOT against concurrency, and its plot
  engine sc1024 49280 2048 24 16 1 8192 learned_absolute 2048 4096 1024
  python3 benchmarks/concurrency_sweep.py run --engine_dir /tmp/eng-sc1024 --out "$OUT/sweep" --concurrency 1 4 16 64 256 1024 \
    --requests_per_concurrency 2 2>&1 | grep "^bench:\|rror"
  python3 benchmarks/concurrency_sweep.py plot "$OUT/sweep" --png "$OUT/concurrency.png"
fi
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    if "trt_gpt" not in r:
        continue   # not a bench report (e.g. gemv.json)
    t = r["trt_gpt"]; h = r.get("hf")
    print(f"{f.stem:18s} trt-gpt {t['output_tok_per_s']:9.0f} tok/s  TTFT p50 {t['ttft_ms']['p50']:8.1f} ms  "
          f"TPOT p50 {t['tpot_ms']['p50']:6.2f} ms" + (f" | HF {h['mode']} {h['output_tok_per_s']:8.0f} tok/s "
          f"({r['speedup_vs_hf']:.1f}x)" if h else ""))
PY
