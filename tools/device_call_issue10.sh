#!/usr/bin/env bash
# Issue 10 diagnostics on the GPU machine, one device call (about 4 minutes on one H200; no
# build, no fp4q run there). From the repository root there:
#
#   bash tools/device_call_issue10.sh "$OUT"
#
# carry: .device/consumers-h10 (here: FP4Q=build-h10/fp4q tools/make_consumer_exports.sh
#        data/models/stories260K .device/consumers-h10/stories260K, then FP4Q=build-h10/fp4q
#        tools/make_consumer_dumps.sh .device/consumers-h10/stories260K; about 48 MiB),
#        .ref/fp_quant-inference_lib, .ref/compressed-tensors (2 MiB).
# Installs fp_quant from FP-Quant's source into /tmp/site (pip --no-deps --no-index; a plain copy
# when pip refuses), then tools/verify_consumers.py with every check: the kernel rule with the
# GPU's own reciprocals, the reciprocal / floor(log2) probes (the measured reciprocal table is
# written to $OUT/triton_rcp_table.inc), fp4q's dumped activation transforms against the kernel
# and the library Linear by Linear, cuBLAS vs fp4q's GEMM order, and the library's perplexity
# under other summation orders. Writes $OUT/consumers.json, consumers_log.txt, consumers.out
# (console, rc), pip.log, machine.txt, triton_rcp_table.inc.
set -u
out="${1:?usage: tools/device_call_issue10.sh OUT}"
root="${ROOT:-.device/consumers-h10/stories260K}"
mkdir -p "$out"
{ nvidia-smi -L; python3 -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)'; } \
  > "$out/machine.txt" 2>&1
(python3 -m pip install -q --no-deps --no-index --no-build-isolation --target /tmp/site .ref/fp_quant-inference_lib/inference_lib \
   || { mkdir -p /tmp/site/fp_quant-0.3.2.dist-info && cp -r .ref/fp_quant-inference_lib/inference_lib/src/fp_quant /tmp/site/ \
        && printf 'Metadata-Version: 2.1\nName: fp_quant\nVersion: 0.3.2\n' > /tmp/site/fp_quant-0.3.2.dist-info/METADATA; }) \
  > "$out/pip.log" 2>&1
PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout "${VERIFY_S:-480}" python3 tools/verify_consumers.py --root "$root" \
  --ct-src .ref/compressed-tensors/src --out "$out/consumers.json" --log "$out/consumers_log.txt" ${VERIFY_ARGS:-} \
  > "$out/consumers.out" 2>&1
echo "rc=$?" >> "$out/consumers.out"
tail -3 "$out/consumers.out"
