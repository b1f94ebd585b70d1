#!/usr/bin/env bash
# Every GPU figure of issue 14 in one table, on a bare CUDA machine (Python 3.12 + torch, no Ray, no network).
#
#   bash bench/gpu_check.sh                      # CUDA: the full check, <= 6 minutes
#   bash bench/gpu_check.sh --quick --parts step # CPU smoke run at tiny sizes (tests/test_gpu_check.py)
#
# Ray and the other missing packages come from the archive ../shared/gpu/pack-site.sh builds (.gpu/site.tar.xz,
# or $GPU_CHECK_SITE); without one, what is installed is used. Parts, in order (--parts / $GPU_CHECK_PARTS):
#   step     bench/gpu_step.py: plain step vs canonical pix2pix, batch 32 and 1, MFU; FID feature rate
#   train    bench/train_step.py --gpu: `ganime train` steady state vs the plain step (Ray Train)
#   data     bench/data_pipeline.py: Ray Data vs one process, pairs/s per CPU
#   serve    bench/serve_latency.py: serving latency, codec, c=16 throughput
#   compile  bench/gpu_step.py --compile at batch 32 (torch.compile: slow to build, so last)
# Each part has its own time limit, cut to what is left of the total ($GPU_CHECK_BUDGET_S, 360 s). Logs and
# gpu_step.json go to $OUT (or ./gpu-check-out); summary.tsv (figure, value, target) and summary.md at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=${GPU_CHECK_QUICK:-0}
PARTS=${GPU_CHECK_PARTS:-step,train,data,serve,compile}
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --parts) PARTS=$2; shift ;;
    --parts=*) PARTS=${1#--parts=} ;;
    *) echo "usage: $0 [--quick] [--parts step,train,data,serve,compile]" >&2; exit 2 ;;
  esac
  shift
done
OUTDIR=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-360}
SITE=${GPU_CHECK_SITE:-$ROOT/.gpu/site.tar.xz}
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
: > "$OUTDIR/parts.tsv"

if [ -f "$SITE" ]; then
  SITEDIR=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
  tar -xJf "$SITE" -C "$SITEDIR" || { echo "cannot unpack $SITE" >&2; exit 1; }
  export PYTHONPATH=$SITEDIR/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
{ date -u; nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; nproc
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} > "$OUTDIR/env.txt" 2>&1

if [ "$QUICK" = 1 ]; then
  STEP_ARGS=(--size 32 --ngf 8 --batches 4,1 --precisions auto,bfloat16 --steps 2 --warmup 2 --repeats 1 --fid-images 2)
  COMPILE_ARGS=(--size 32 --ngf 8 --batches 4 --precisions bfloat16 --steps 2 --warmup 2 --repeats 1)
  TRAIN_ARGS=(--size 32 --batch 4 --ngf 8 --steps 6 --epochs 2 --plain-seconds 5)
  DATA_ARGS=(--count 64 --size 32 --epochs 2)
  SERVE_ARGS=(--size 32 --ngf 8 --requests 4)
else
  STEP_ARGS=(--size 256 --batches 32,8,1 --steps 20 --repeats 3 --nchw --fid-images 4096)
  COMPILE_ARGS=(--size 256 --batches 32 --precisions bfloat16 --steps 20 --repeats 2)
  TRAIN_ARGS=(--size 256 --batch 32 --ngf 64 --steps 40 --epochs 3 --cpus-per-worker 2 --plain-seconds 10)
  DATA_ARGS=(--count 2000 --size 256 --epochs 3)
  SERVE_ARGS=(--size 256)
fi
# Flags the other benchmarks may not have (yet): only passed where their --help shows them.
has_flag() { grep -q -- "\"$2\"" "bench/$1"; }
if has_flag train_step.py --gpu; then TRAIN_ARGS+=(--gpu); else TRAIN_NOTE="(CPU: train_step.py has no --gpu)"; fi
if has_flag serve_latency.py --device; then SERVE_ARGS+=(--device auto); fi

# run NAME LIMIT_S CMD...: the command under min(LIMIT_S, what is left of the budget), output in NAME.log.
run() {
  local name=$1 limit=$2 left=$((BUDGET - SECONDS)); shift 2
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then printf '%s\tskipped\t0\n' "$name" >> "$OUTDIR/parts.tsv"; return; fi
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*" >&2
  timeout -k 10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  local status=ok; [ $rc -ne 0 ] && status="rc=$rc"; [ $rc -eq 124 ] && status=timeout
  printf '%s\t%s\t%d\n' "$name" "$status" $((SECONDS - start)) >> "$OUTDIR/parts.tsv"
}

for part in ${PARTS//,/ }; do
  case $part in
    step) run step 120 "$PY" bench/gpu_step.py "${STEP_ARGS[@]}" --json "$OUTDIR/gpu_step.json" ;;
    train) run train 150 "$PY" bench/train_step.py "${TRAIN_ARGS[@]}" ;;
    data) run data 90 "$PY" bench/data_pipeline.py "${DATA_ARGS[@]}" ;;
    serve) run serve 90 "$PY" bench/serve_latency.py "${SERVE_ARGS[@]}" ;;
    compile) run compile 150 "$PY" bench/gpu_step.py "${COMPILE_ARGS[@]}" --compile --json "$OUTDIR/gpu_compile.json" ;;
    *) echo "unknown part $part (step, train, data, serve, compile)" >&2; exit 2 ;;
  esac
done

"$PY" - "$OUTDIR" "${TRAIN_NOTE:-}" <<'EOF'
"""summary.tsv (figure, value, target) and summary.md from the parts' JSON and logs."""
import json
import re
import sys
from pathlib import Path

out, train_note = Path(sys.argv[1]), sys.argv[2]
rows = [("machine", " / ".join(l.strip() for l in (out / "env.txt").read_text().splitlines()[1:] if l.strip()), "")]
parts = [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines() if line]
rows += [(f"part {name}", f"{status}, {secs} s", "ok") for name, status, secs in parts]

for file in ("gpu_step.json", "gpu_compile.json"):
    if not (out / file).is_file():
        continue
    step = json.loads((out / file).read_text())
    for r in step["rows"]:
        what = f"step {step['size']} px batch {r['batch']} {r['variant']}"
        rows.append((f"{what} ms", f"{r['ms']:.2f}", ""))
        if r["variant"].startswith("ours"):
            target = ">= 1.0" if r["batch"] == 1 and "auto" in r["variant"] else ""
            rows.append((f"{what} / canonical (speed)", f"{r['vs_canonical']:.3f}", target))
            target = ">= 0.30" if r["batch"] == 32 and r["dtype"] == "bfloat16" else ""
            rows.append((f"{what} MFU", "n/a" if r["mfu"] is None else f"{r['mfu']:.3f}", target))
    if "fid_images_per_s" in step:
        rows.append(("FID Inception features float32 img/s", f"{step['fid_images_per_s']:.1f}", ""))

# The Ray benchmarks print their figures as text: their ratio / rate lines go into the table as they are.
KEEP = re.compile(r"ratio|pairs/s|req/s|images/s|encode|codec|p50|per cpu", re.I)
for name, note in (("train", train_note), ("data", ""), ("serve", "")):
    log = out / f"{name}.log"
    if not log.is_file():
        continue
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if KEEP.search(l)]
    for i, line in enumerate(lines[-12:]):
        rows.append((f"{name} {i + 1} {note}".strip(), line.replace("\t", " "), "see line"))

with open(out / "summary.tsv", "w") as f:
    f.write("figure\tvalue\ttarget\n")
    f.writelines(f"{a}\t{b}\t{c}\n" for a, b, c in rows)
md = ["| figure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
