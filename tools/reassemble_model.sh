#!/usr/bin/env bash
# Reassembles the evaluation model returned by the GPU run of tools/train_eval_model.py:
#   tools/reassemble_model.sh FILES_DIR [DEST]     (DEST default: models/, git-ignored)
# FILES_DIR holds <name>.tar.partNN and train_log.json; every piece and the whole tar are checked
# against the sha256 sums in train_log.json before DEST/<name>/ is written. train_log.json is
# copied next to the model (DEST/<name>.train_log.json).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:?usage: tools/reassemble_model.sh FILES_DIR [DEST]}"
dest="${2:-$here/models}"
mkdir -p "$dest"
python3 - "$src" "$dest" <<'PY'
import hashlib, io, json, os, sys, tarfile
src, dest = sys.argv[1], sys.argv[2]
log = json.load(open(os.path.join(src, "train_log.json")))
pk = log["package"]
data = b""
for p in pk["parts"]:
    b = open(os.path.join(src, p["file"]), "rb").read()
    if hashlib.sha256(b).hexdigest() != p["sha256"] or len(b) != p["bytes"]:
        sys.exit(f"{p['file']}: size or sha256 differs from train_log.json")
    data += b
if hashlib.sha256(data).hexdigest() != pk["tar_sha256"]:
    sys.exit("reassembled tar: sha256 differs from train_log.json")
with tarfile.open(fileobj=io.BytesIO(data)) as tf:
    for m in tf.getmembers():
        if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/") or not m.name.startswith(pk["name"] + "/"):
            sys.exit(f"unexpected tar member {m.name!r}")
    tf.extractall(dest)
st = os.path.join(dest, pk["name"], "model.safetensors")
if hashlib.sha256(open(st, "rb").read()).hexdigest() != pk["model_safetensors_sha256"]:
    sys.exit("model.safetensors: sha256 differs")
json.dump(log, open(os.path.join(dest, pk["name"] + ".train_log.json"), "w"), indent=1)
print(f"{os.path.join(dest, pk['name'])}: {len(pk['files'])} files, {log['params']} parameters, "
      f"{log['steps']} steps, final val loss {log['check']['val_loss_saved_fp32']:.4f} (fp32)")
PY
