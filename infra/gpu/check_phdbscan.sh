#!/usr/bin/env bash
# GPU check for pHDBSCAN: N=10,000,000 points of DIM=64 on one GPU within LIMIT_S=300 s, and the
# GPU path's labels against the CPU path's on a SAMPLE=1,000,000-point sample (ARI >= MIN_ARI=0.95).
#
#   bash infra/gpu/check_phdbscan.sh              # on a machine with an NVIDIA GPU, from anywhere
#   CPU_ONLY=1 N=20000 SAMPLE=5000 bash infra/gpu/check_phdbscan.sh   # the same steps on CPU, small
#
# It installs faiss-gpu into the project's environment (FAISS then searches on the GPU; the rest of
# the code is unchanged), runs both steps, prints one JSON line per step and a verdict line, and
# exits 0 when both targets are met, 1 when one is missed, 3 when there is no GPU to run on.
# OUT (default: a temporary folder) receives full.json, compare.json and verdict.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000000}
DIM=${DIM:-64}
SAMPLE=${SAMPLE:-1000000}
LIMIT_S=${LIMIT_S:-300}
MIN_ARI=${MIN_ARI:-0.95}
CPU_ONLY=${CPU_ONLY:-0}
OUT=${OUT:-$(mktemp -d -t phdbscan-gpu-XXXX)}
mkdir -p "$OUT"

if [ "$CPU_ONLY" != 1 ]; then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU here; run this on a GPU machine (or CPU_ONLY=1 to check the steps on CPU)" >&2
    exit 3
  fi
  make setup >/dev/null
  .venv/bin/pip uninstall -q -y faiss-cpu
  .venv/bin/pip install -q "faiss-gpu-cu12>=1.8"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  .venv/bin/python -c "import faiss; assert faiss.get_num_gpus() > 0, 'faiss sees no GPU'; print('faiss GPUs:', faiss.get_num_gpus())"
fi

echo "step 1: $N x $DIM, pHDBSCAN only" >&2
.venv/bin/argus bench cluster --n "$N" --dim "$DIM" --skip-hdbscan --skip-fast --json | tee "$OUT/full.json"

echo "step 2: GPU against CPU labels on $SAMPLE x $DIM" >&2
gpu=$([ "$CPU_ONLY" = 1 ] && echo 0 || echo 1)
.venv/bin/python -m argus.infra.gpu.compare_paths --n "$SAMPLE" --dim "$DIM" --gpu "$gpu" | tee "$OUT/compare.json"

.venv/bin/python - "$OUT" "$LIMIT_S" "$MIN_ARI" <<'PY' | tee "$OUT/verdict.json"
import json, sys
from pathlib import Path

out, limit_s, min_ari = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
full = json.loads((out / "full.json").read_text())
compare = json.loads((out / "compare.json").read_text())
verdict = {
    "seconds": full["ours_s"], "limit_s": limit_s, "fast_enough": full["ours_s"] <= limit_s,
    "ari_gpu_vs_cpu": compare["ari"], "min_ari": min_ari, "agrees": compare["ari"] >= min_ari,
}
print(json.dumps(verdict))
sys.exit(0 if verdict["fast_enough"] and verdict["agrees"] else 1)
PY
