#!/usr/bin/env bash
# Prepares, on a machine with PyPI, what a GPU machine without a package index needs to run
# edgepipe's GPU checks (scripts/gpu-check.sh): the wheels for Python 3.12 on x86-64 that its
# image lacks, pycuda's source, and TensorRT-RTX's libs wheel in two parts, each small enough to
# travel with one call. Writes (in the repository root, ignored by git):
#   .gpu/p1/  the small wheels, pycuda's sdist, part 1 of the libs wheel, its parts manifest, SHA256SUMS
#   .gpu/p2/  part 2 of the libs wheel, its parts manifest, SHA256SUMS
# Usage: scripts/gpu-prepare.sh            (again: files already there are kept; --clean starts over)
# Environment: PIP (default "python3 -m pip"), PYTHON (default python3), CAP_MIB (largest folder, default 56).
# That pip's Python needs setuptools and numpy (two sdists are read or built without build isolation):
# `make gpu-prepare` uses the project's .venv.
set -euo pipefail

cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
PYTHON=${PYTHON:-python3}
CAP_MIB=${CAP_MIB:-56}
GPU=.gpu
DL=$GPU/download

# Missing from the GPU image (docs/gpu.md, "What travels"), pinned to the versions edgepipe is tested with.
# tensorrt_rtx_cu13 (the tensorrt_rtx module) is pure Python published as an sdist only: built here into a
# py3-none-any wheel, as is cppimport (also sdist only). The tensorrt_rtx meta package holds no code and is not needed.
TRT_VERSION=1.7.1.116
LIBS_WHEEL_NAME=tensorrt_rtx_cu13_libs
WHEELS=(
  "tensorrt_rtx_cu13_bindings==$TRT_VERSION"
  "polygraphy==0.53.6"
  "nvidia-modelopt==0.47.0"
  "onnx-graphsurgeon==0.6.1"
  "onnxconverter-common==1.16.0"
  "onnxslim==0.1.98"
  "lief==1.0.0"
  "mako==1.4.3"
  "pytools==2026.1.1"
  "siphash24==1.9"
  "platformdirs==4.14.9"
)
PURE_SDISTS=("tensorrt_rtx_cu13==$TRT_VERSION" "cppimport==26.4.17")
PYCUDA="pycuda==2026.1"
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64
  manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 linux_x86_64)

if [[ "${1:-}" == "--clean" ]]; then
  rm -rf "$GPU"
fi
mkdir -p "$DL" "$GPU/p1" "$GPU/p2"

download_wheel() {
  local platform_args=()
  for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" -d "$DL" "$1"
}

for spec in "${WHEELS[@]}" "$LIBS_WHEEL_NAME==$TRT_VERSION"; do
  download_wheel "$spec"
done
for spec in "${PURE_SDISTS[@]}"; do
  $PIP wheel -q --no-deps --no-build-isolation -w "$DL" "$spec"
done
# pycuda ships no wheels: its source is built with nvcc on the GPU machine. --no-build-isolation
# keeps pip from fetching numpy's sources just to read the package's metadata.
$PIP download -q --no-deps --no-binary=pycuda --no-build-isolation -d "$DL" "$PYCUDA"

# One version of each package: two would stop the whole install there.
dups=$(find "$DL" -maxdepth 1 -type f -printf '%f\n' | sed -E 's/-[0-9].*//' | tr '[:upper:]-' '[:lower:]_' | sort | uniq -d)
if [[ -n "$dups" ]]; then
  echo "gpu-prepare: more than one version of: $dups (remove the stale files from $DL)" >&2
  exit 1
fi

libs=$(ls "$DL"/"$LIBS_WHEEL_NAME"-*.whl)
rm -rf "$GPU"/p[3-9]
rm -f "$GPU"/p1/* "$GPU"/p2/*
for f in "$DL"/*; do
  [[ "$f" == "$libs" ]] || cp "$f" "$GPU/p1/"
done
small_bytes=$(du -cb "$GPU"/p1/* | tail -1 | cut -f1)
first_mib=$(( CAP_MIB - (small_bytes + 2**20 - 1) / 2**20 ))
if (( first_mib < 1 )); then
  echo "gpu-prepare: the small files alone take more than CAP_MIB=$CAP_MIB MiB" >&2
  exit 1
fi
$PYTHON scripts/parts.py split "$libs" --first-max-mib "$first_mib" --max-mib "$CAP_MIB" --dest "$GPU" >/dev/null
if [[ -d "$GPU/p3" ]]; then
  echo "gpu-prepare: the libs wheel needs more than two parts at CAP_MIB=$CAP_MIB; raise CAP_MIB (at most ~60)" >&2
  exit 1
fi
for folder in "$GPU/p1" "$GPU/p2"; do
  rm -f "$folder/SHA256SUMS"
  (cd "$folder" && files=(*) && sha256sum -- "${files[@]}" >SHA256SUMS)
done

tree_bytes=$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "working tree that travels with every call: $(( tree_bytes / 1024 )) KiB"
for folder in "$GPU/p1" "$GPU/p2"; do
  bytes=$(du -cb "$folder"/* | tail -1 | cut -f1)
  echo "$folder: $(( bytes / 1024 )) KiB, with the tree $(( (bytes + tree_bytes) / 1024 )) KiB of 65536"
  if (( bytes + tree_bytes > 63 * 2**20 )); then
    echo "gpu-prepare: $folder and the working tree exceed 63 MiB; lower CAP_MIB" >&2
    exit 1
  fi
done
ls -l "$DL"
