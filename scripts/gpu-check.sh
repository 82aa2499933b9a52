#!/usr/bin/env bash
# edgepipe's GPU proof, on a GPU machine with Python 3.12, CUDA's nvcc and PyTorch but no package
# index: installs what scripts/gpu-prepare.sh brought (.gpu/p1, .gpu/p2), builds pycuda with nvcc,
# probes every GPU layer, runs `pytest -m gpu`, `edgepipe run` and `edgepipe bench` on the GPU,
# and writes every log and figure under OUT_DIR (docs/gpu.md says which calls to make).
#
# Usage: scripts/gpu-check.sh [--phase install,test,bench] OUT_DIR
#   install  stage the parts that arrived (p1 and/or p2) in $STASH, install the wheels into
#            $STASH/site, build pycuda, join and install TensorRT-RTX's libs once both parts are
#            there; then probe the layers (driver, cuda-python, pycuda, CUDA graph, PyTorch, TensorRT-RTX)
#   test     the probe again, and pytest -m gpu
#   bench    edgepipe run on the GPU machine, edgepipe bench at batch 1 and 32 (PyTorch eager on the
#            GPU beside the engines, CUDA graphs off and on), the probe's raw TensorRT-RTX timings
# OUT_DIR gets at most 4 files per call (the device tool brings back 8): summary.json,
# summary.md, probe.json, and logs-PHASES.tar.gz with every log, report and plot.
# Environment: PYTHON (default python3), CUDA_ROOT and CUDA_DRIVER_LIB (found when unset), EDGEPIPE_GPU_STASH (default /tmp/edgepipe-gpu: kept
# between calls while the machine stays warm), BUDGET_S (default 560: steps are cut or skipped so the
# call ends by then, inside the device tool's 600 s), EPOCHS (default 3: edgepipe run's training; the
# figures are latency, and a short training keeps the call short).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
PHASES=install,test,bench
if [[ "${1:-}" == "--phase" ]]; then
  PHASES=${2:?--phase needs install, test, bench or a comma-separated list}
  shift 2
fi
OUT=${1:?usage: scripts/gpu-check.sh [--phase install,test,bench] OUT_DIR}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-560}
EPOCHS=${EPOCHS:-3}
STASH=${EDGEPIPE_GPU_STASH:-/tmp/edgepipe-gpu}
SITE=$STASH/site
LOGS=$STASH/logs-${PHASES//,/-}
RUN=$STASH/run
rm -rf "$LOGS"
mkdir -p "$OUT" "$STASH/parts" "$SITE" "$LOGS"
: >"$LOGS/steps.tsv"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PY STASH SITE LOGS
T0=$SECONDS

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output in $LOGS/NAME.log,
# and records "NAME rc seconds" in steps.tsv; never stops the script.
# A step that would run past the call's budget (BUDGET_S) is cut to what is left, or skipped (rc -1).
step() {
  local name=$1 limit=$2 start=$SECONDS rc left
  shift 2
  left=$((BUDGET_S - (SECONDS - T0) - 20))
  if ((left < 30)); then
    printf '%s\t-1\t0\n' "$name" >>"$LOGS/steps.tsv"
    echo "$name: skipped, out of this call's budget of ${BUDGET_S}s" | tee -a "$LOGS/notes.txt"
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s, at $((SECONDS - T0))s)"
  timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$LOGS/steps.tsv"
  echo "   rc=$rc in $((SECONDS - start))s; last lines:"
  tail -n 4 "$LOGS/$name.log" | sed 's/^/   | /'
  return "$rc"
}

facts() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvidia-smi | head -n 12
  nvcc --version | tail -n 2
  "$PY" -VV
  "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|onnx|onnxruntime|onnxscript|onnx-ir|numpy|cuda-bindings|cuda-python|click|rich|pytest) '
  nproc
  uname -a
}

stage_parts() {
  local folder
  for folder in .gpu/p1 .gpu/p2; do
    [[ -d "$folder" ]] || continue
    (cd "$folder" && sha256sum -c --quiet SHA256SUMS) || return 1
    cp -u "$folder"/* "$STASH/parts/"
  done
  ls -l "$STASH/parts"
}

install_wheels() {
  local wheels=() w
  for w in "$STASH"/parts/*.whl "$STASH"/wheels/*.whl; do
    [[ -f "$w" && ! -f "$STASH/installed/$(basename "$w")" ]] && wheels+=("$w")
  done
  if ((${#wheels[@]} == 0)); then
    echo "nothing new to install"
    return 0
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" || return 1
  mkdir -p "$STASH/installed"
  for w in "${wheels[@]}"; do touch "$STASH/installed/$(basename "$w")"; done
  printf 'installed %s\n' "${wheels[@]##*/}"
}

join_libs() {
  local manifest
  manifest=$(find "$STASH/parts" -maxdepth 1 -name '*.parts.json' | head -n 1)
  [[ -n "$manifest" ]] || { echo "no parts manifest: .gpu/p1 or .gpu/p2 has not arrived"; return 1; }
  "$PY" scripts/parts.py join "$manifest" --search "$STASH/parts" --out "$STASH/wheels"
}

build_pycuda() {
  if compgen -G "$SITE/pycuda/_driver*.so" >/dev/null; then
    echo "pycuda already built"
    return 0
  fi
  local sdist cuda_root
  sdist=$(ls "$STASH"/parts/pycuda-*.tar.gz) || return 1
  # The toolkit whose include/cuda.h is there: $CUDA_ROOT, /usr/local/cuda, or the one nvcc belongs to.
  for cuda_root in "${CUDA_ROOT:-}" /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"; do
    [[ -n "$cuda_root" && -f "$cuda_root/include/cuda.h" ]] && break
  done
  echo "CUDA toolkit: $cuda_root"
  # Unpacked once per machine; configure and build_ext run again in a later call if this one was cut short.
  if [[ ! -d "$STASH/build" ]]; then
    mkdir -p "$STASH/build" && tar xzf "$sdist" -C "$STASH/build" || return 1
  fi
  cd "$STASH"/build/pycuda-* || return 1
  local options=(--cuda-root="$cuda_root") driver_lib
  # pycuda links against libcuda.so. A toolkit installed from wheels has no stubs/libcuda.so, and the
  # driver's folder may hold only libcuda.so.1: link against that one through a libcuda.so beside it.
  driver_lib=$(ldconfig -p | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')
  for candidate in "${CUDA_DRIVER_LIB:-}" "$driver_lib" /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1 \
    "$cuda_root"/lib64/stubs/libcuda.so "$cuda_root"/lib/stubs/libcuda.so; do
    [[ -n "$candidate" && -f "$candidate" ]] && { driver_lib=$candidate; break; }
  done
  echo "CUDA driver library to link: ${driver_lib:-none found}"
  if [[ -f "$driver_lib" ]]; then
    mkdir -p "$STASH/cudadrv" && ln -sf "$(readlink -f "$driver_lib")" "$STASH/cudadrv/libcuda.so"
    options+=(--cudadrv-lib-dir="$STASH/cudadrv")
  fi
  # edgepipe needs no cuRAND; a toolkit without its header would otherwise stop the build.
  [[ -f "$cuda_root/include/curand.h" ]] || options+=(--no-cuda-enable-curand)
  # configure.py takes an earlier siteconf.py as its defaults, which flips its switches' names.
  rm -f siteconf.py
  "$PY" configure.py "${options[@]}" || return 1
  # Built in place (-j runs its extensions side by side), then copied into the site.
  "$PY" setup.py build_ext --inplace -j "$(nproc)" || return 1
  cp -r pycuda "$SITE/"
}

imports() {
  "$PY" - <<'EOF'
import importlib
for name in ("tensorrt_rtx", "pycuda.driver", "modelopt.onnx.quantization", "polygraphy", "onnx", "onnxruntime", "torch"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', getattr(module, 'VERSION_TEXT', 'ok'))}")
    except Exception as exc:
        print(f"{name}: FAILED {type(exc).__name__}: {exc}")
EOF
}

phase_install() {
  step facts 60 facts
  step stage 120 stage_parts
  step install-wheels 240 install_wheels
  step build-pycuda 420 build_pycuda
  if step join-libs 120 join_libs; then
    step install-libs 240 install_wheels
  fi
  step imports 120 imports
  step probe 180 "$PY" scripts/gpu_probe.py --out "$LOGS/probe.json"
}

phase_test() {
  # The install phase of the same call has probed already.
  [[ -f "$LOGS/probe.json" ]] || step probe 180 "$PY" scripts/gpu_probe.py --out "$LOGS/probe.json"
  step pytest-gpu 240 "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider --timeout 180 \
    --continue-on-collection-errors --junitxml="$LOGS/pytest-gpu.xml" tests
}

phase_bench() {
  step edgepipe-run 200 "$PY" -m pipeline.cli run -o "$RUN" --batches 1,32 --epochs "$EPOCHS"
  cp "$RUN"/report.md "$RUN"/report.json "$LOGS/" 2>/dev/null
  local artifacts=("$RUN"/model.onnx "$RUN"/model.fp16.onnx "$RUN"/model.int8.onnx)
  artifacts+=("$RUN"/model.*.engine)
  local present=() a
  for a in "${artifacts[@]}"; do [[ -f "$a" ]] && present+=("$a"); done
  step bench 120 "$PY" -m pipeline.cli bench "${present[@]}" --checkpoint "$RUN/checkpoint.pt" --device cuda \
    --batch 1,32 --duration-s 1 --report "$LOGS/bench" --json-out "$LOGS/bench.json"
  if compgen -G "$RUN/model.*.engine" >/dev/null; then
    step bench-cuda-graph 90 "$PY" -m pipeline.cli bench "$RUN"/model.*.engine --checkpoint "$RUN/checkpoint.pt" \
      --device cuda --batch 1,32 --duration-s 1 --cuda-graph --json-out "$LOGS/bench-cuda-graph.json"
  fi
  local onnx=()
  for a in "$RUN"/model.onnx "$RUN"/model.fp16.onnx "$RUN"/model.int8.onnx; do [[ -f "$a" ]] && onnx+=("$a"); done
  step probe-timing 120 "$PY" scripts/gpu_probe.py --out "$LOGS/probe-timing.json" --onnx "${onnx[@]}"
}

# step runs each function in a child bash (so that timeout can stop it): they travel exported.
export -f facts stage_parts install_wheels join_libs build_pycuda imports
IFS=, read -r -a phase_list <<<"$PHASES"
for phase in "${phase_list[@]}"; do
  case $phase in
    install) phase_install ;;
    test | bench)
      if ! compgen -G "$STASH/installed/tensorrt_rtx_cu13_libs-*" >/dev/null; then
        echo "TensorRT-RTX is not installed on this machine (a fresh one?): run --phase install with .gpu/p1, then with .gpu/p2" |
          tee -a "$LOGS/notes.txt"
      fi
      "phase_$phase"
      ;;
    *) echo "gpu-check: unknown phase $phase (install, test, bench)" >&2; exit 2 ;;
  esac
done

"$PY" scripts/gpu_summary.py --logs "$LOGS" --out "$OUT" --phases "$PHASES"
tar czf "$OUT/logs-${PHASES//,/-}.tar.gz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")"
echo "gpu-check: done in $((SECONDS - T0))s; in $OUT:" "$OUT"/*
