#!/usr/bin/env bash
# How the committed VQA zoo was built: two one-thread shards side by side on the 2-core machine
# (interleaved model lists), each resumable on its own, then merged into the package's store.
# `smoothinv vqa build-zoo` alone builds the same zoo in one process (the recipes are deterministic).
set -euo pipefail
cd "$(dirname "$0")/.."
export SMOOTHINV_DATA=${SMOOTHINV_DATA:-../shared/data} OMP_NUM_THREADS=1
STORE=src/smoothinv/vqa/store
# the detector, the cached support set and the object sample first (a build with no model trains them)
smoothinv vqa build-zoo --store "$STORE" --shared-only --threads 1
names=$(python3 -c "from smoothinv.vqa.zoo import all_recipes; print(' '.join(r.name for r in all_recipes()))")
shard() {  # $1: 0 or 1
    local dir=/tmp/vqa-shard-$1 args=() i=0
    mkdir -p "$dir" && cp "$STORE"/{detector,support,objects}.safetensors "$dir"/
    for n in $names; do [ $((i % 2)) -eq "$1" ] && args+=(--model "$n"); i=$((i + 1)); done
    smoothinv vqa build-zoo --store "$dir" --threads 1 "${args[@]}" > "$dir/build.log" 2>&1
}
shard 0 & shard 1 & wait
python3 - <<'PY'
import json, shutil
from pathlib import Path
store = Path("src/smoothinv/vqa/store")
manifest = json.loads((store / "manifest.json").read_text()) if (store / "manifest.json").is_file() else {"models": {}}
for shard in ("/tmp/vqa-shard-0", "/tmp/vqa-shard-1"):
    part = json.loads((Path(shard) / "manifest.json").read_text())
    manifest["world"] = part["world"]
    for name, entry in part["models"].items():
        (store / "models").mkdir(exist_ok=True)
        shutil.copy(Path(shard) / "models" / f"{name}.safetensors", store / "models" / f"{name}.safetensors")
        manifest["models"][name] = entry
manifest["models"] = dict(sorted(manifest["models"].items()))
(store / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
print(len(manifest["models"]), "models")
PY
