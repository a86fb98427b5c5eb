#!/usr/bin/env bash
# GPU check for pHDBSCAN: 10,000,000 points of 64 dimensions on one GPU, target <= 300 s.
# Run on a machine with an NVIDIA GPU from the repository root: bash infra/gpu/check_phdbscan.sh
# It installs faiss-gpu into the project's environment (FAISS then searches on the GPU; the rest
# of the code is unchanged) and prints the benchmark's JSON line plus the GPU it ran on.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000000}
DIM=${DIM:-64}
make setup >/dev/null
.venv/bin/pip uninstall -q -y faiss-cpu
.venv/bin/pip install -q "faiss-gpu-cu12>=1.8"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
.venv/bin/python -c "import faiss; assert faiss.get_num_gpus() > 0, 'faiss sees no GPU'; print('faiss GPUs:', faiss.get_num_gpus())"
.venv/bin/argus bench cluster --n "$N" --dim "$DIM" --skip-hdbscan --skip-fast --json
