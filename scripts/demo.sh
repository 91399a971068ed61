#!/usr/bin/env bash
# make demo: everything from a fresh clone to a serving page, offline.
#   make demo                                           the drawn demo catalog + a demo CLIP trained here
#   make demo MODEL=openai/clip-vit-base-patch32 CATALOG=path/catalog.jsonl   a real CLIP on your catalog
# The catalog and the model are built once and reused; the page is served on PORT (8501).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT=${PORT:-8501}
start=$(date +%s)
if [ -n "${MODEL:-}" ]; then
  CATALOG=${CATALOG:?MODEL=... needs CATALOG=path/to/catalog.jsonl (or .csv)}
  DEMO=${DEMO:-data/demo-$(basename "$MODEL")}
  $PY -m pipeline export --model "$MODEL" --out "$DEMO/model_repository"
else
  DEMO=${DEMO:-data/demo}
  CATALOG=${CATALOG:-$DEMO/catalog/catalog.jsonl}
  [ -f "$DEMO/catalog/catalog.jsonl" ] || $PY -m pipeline demo-catalog "$DEMO/catalog"
  [ -f "$DEMO/model/model.safetensors" ] || $PY -m pipeline train --model small \
      --catalog "$DEMO/catalog/catalog.jsonl" --out "$DEMO/model"
  $PY -m pipeline export --model "$DEMO/model" --out "$DEMO/model_repository" --precision int8 --precision fp32
fi
export PIPELINE__ENCODER__MODEL_REPOSITORY="$DEMO/model_repository"
export PIPELINE__QDRANT__PATH="$DEMO/qdrant"
export PIPELINE__MONGO__DATA_DIR="$DEMO/mongo"
$PY -m pipeline ingest "$CATALOG"
echo "demo ready in $(( $(date +%s) - start )) s: open http://localhost:$PORT  (Ctrl-C stops it)"
exec $PY -m streamlit run ui/app.py --server.port "$PORT" --server.headless true \
    --browser.gatherUsageStats false
