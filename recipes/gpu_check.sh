#!/usr/bin/env bash
# The prepared CUDA check (issue 28): cuda-marked tests, then the paper's Table 3 settings
# measured with the CUDA allocator, in at most 9 minutes on one device. Everything goes under
# --out DIR. On a machine without a GPU: bash recipes/gpu_check.sh --cpu --tiny --out DIR
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m hpff_zoo.benchmark gpu "$@"
