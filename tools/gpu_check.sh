#!/usr/bin/env bash
# GPU check, on a Linux x86_64 machine with an NVIDIA GPU and this checkout beside ../shared/data:
#   bash tools/gpu_check.sh
# Installs the CUDA 13 runtime and cuDNN 9 as a user would (ONNX Runtime's own pip extras, which bring NVIDIA's
# packages; the bundle preloads them), then runs tools/gpu_check.py: `defmap ... device gpu` on 6EZ8 must run on
# CUDAExecutionProvider and equal the CPU run within 1e-4; it prints patches per second for both.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "gpu_check: no NVIDIA GPU"; exit 2; }
make install
ORT=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('onnxruntime-gpu'))")
.venv/bin/pip install -q -c tools/constraints.txt "onnxruntime-gpu[cuda,cudnn]==$ORT"
.venv/bin/python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
.venv/bin/python tools/gpu_check.py
