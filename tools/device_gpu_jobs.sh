# Sourced by tools/device_call_quality.sh and tools/device_call_bench.sh: the GPU jobs that either
# call can run in the background on the GPU machine (from the repository root there).

# device_moe_goldens LOGDIR TARDIR SECONDS: tools/golden_models_moe.py; its tarball into TARDIR.
device_moe_goldens() {
  timeout "$3" python3 tools/golden_models_moe.py --out /tmp/moe > "$1/moe.log" 2>&1
  echo "rc=$?" >> "$1/moe.log"
  cp /tmp/moe/*.tar.gz "$2/" 2>/dev/null
}

# device_verify_consumers LOGDIR SECONDS: fp_quant from FP-Quant's source (pip --no-deps --no-index
# --target; a plain copy when pip refuses), then tools/verify_consumers.py on .device/consumers.
device_verify_consumers() {
  (python3 -m pip install -q --no-deps --no-index --no-build-isolation --target /tmp/site .ref/fp_quant-inference_lib/inference_lib \
     || { mkdir -p /tmp/site/fp_quant-0.3.2.dist-info && cp -r .ref/fp_quant-inference_lib/inference_lib/src/fp_quant /tmp/site/ \
          && printf 'Metadata-Version: 2.1\nName: fp_quant\nVersion: 0.3.2\n' > /tmp/site/fp_quant-0.3.2.dist-info/METADATA; }) > "$1/pip.log" 2>&1
  PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout "$2" python3 tools/verify_consumers.py --root .device/consumers/stories260K \
     --ct-src .ref/compressed-tensors/src --out "$1/consumers.json" --log "$1/consumers_log.txt" > "$1/consumers.out" 2>&1
  echo "rc=$?" >> "$1/consumers.out"
}
