#!/usr/bin/env python3
"""Preflight of the FP-Quant side-by-side harness on the GPU machine (about 1 minute).

Builds a tiny random Llama (hidden 128, 2 layers, GQA 4/2, intermediate 256, vocab 512, with a
byte-level BPE tokenizer trained on a few lines) in a temporary directory, writes random
calibration windows and evaluation ids in fp4q's JSON formats, and runs tools/fpquant_shim.py on
it for a few cells that exercise every FP-Quant code path the comparison uses (rotation, MSE
observer, act-order, NVFP4 weight/activation global scales, fused global scale, MXFP4, W4A4,
unquantized). Prints one line per cell and writes OUT/preflight.jsonl (the shim's records) and
OUT/preflight.log (their output). Exit status 0 when every cell finished.

  python3 tools/fpquant_preflight.py --fpquant .ref/FP-Quant --out "$OUT"
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

CELLS = {
    "unquantized": "--w_bits 16 --a_bits 16",
    "nvfp4-w4a4-mrgptq-fused": "--format nvfp --w_bits 4 --a_bits 4 --gptq --w_observer mse "
                               "--quantization_order activation --transform_class hadamard "
                               "--hadamard_group_size 16 --fuse_global_scale",
    "nvfp4-w4a16-gptq": "--format nvfp --w_bits 4 --a_bits 16 --gptq",
    "mxfp4-w4a4-mrgptq": "--format mxfp --w_bits 4 --a_bits 4 --gptq --w_observer mse "
                         "--quantization_order activation --transform_class hadamard --hadamard_group_size 32",
    "nvfp4-w4a16-rtn": "--format nvfp --w_bits 4 --a_bits 16",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fpquant", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM
    tmp = tempfile.mkdtemp()
    mdir = os.path.join(tmp, "tiny")
    os.makedirs(mdir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog %d times" % i for i in range(200)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|bos|>", "<|eos|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(mdir)
    try:
        from transformers import PreTrainedTokenizerFast
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>").save_pretrained(mdir)
    except Exception:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>"},
                  open(os.path.join(mdir, "tokenizer_config.json"), "w"))
    tok.save(os.path.join(mdir, "tokenizer.json"))
    rng = random.Random(0)
    V = tok.get_vocab_size()
    calib = {"format": "fp4q-calib-windows", "version": 1, "seed": 0, "seqlen": 64, "n": 8, "bos": 0,
             "samples": [[0] + [rng.randrange(2, V) for _ in range(63)] for _ in range(8)]}
    json.dump(calib, open(os.path.join(tmp, "calib.json"), "w"))
    json.dump([0] + [rng.randrange(2, V) for _ in range(64 * 4 - 1)], open(os.path.join(tmp, "eval.json"), "w"))
    results = os.path.join(a.out, "preflight.jsonl")
    if os.path.exists(results):
        os.remove(results)
    ok = True
    with open(os.path.join(a.out, "preflight.log"), "w") as log:
        for cell, args in CELLS.items():
            cmd = [sys.executable, os.path.join(here, "fpquant_shim.py"), "--fpquant", a.fpquant,
                   "--calib-windows", os.path.join(tmp, "calib.json"), "--eval", "rand=" + os.path.join(tmp, "eval.json"),
                   "--eval-seqlen", "64", "--results", results, "--tag", cell, "--",
                   "--model_name_or_path", mdir, "--dataset_name_or_path", "fp4q-windows", "--sequence_length", "64",
                   "--num_sequences", "8", "--dtype", "float32", "--eval_perplexity"] + args.split()
            t1 = time.time()
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            log.write(f"==== {cell} (exit {p.returncode}, {time.time() - t1:.1f} s)\n{p.stdout[-20000:]}\n")
            print(f"preflight {cell}: {'ok' if p.returncode == 0 else 'FAILED exit %d' % p.returncode} "
                  f"({time.time() - t1:.1f} s)", flush=True)
            ok &= p.returncode == 0
    print(f"preflight: {'all ok' if ok else 'FAILURES (see preflight.log)'} in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
