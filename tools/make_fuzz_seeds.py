#!/usr/bin/env python3
"""Writes the seed corpora of the libFuzzer targets into tests/fuzz/seeds/<target>/.

Standard library only. Seeds are small (the fuzzers mutate them thousands of times a second):
  * the repository's fixtures (tests/data/bad_safetensors, config.json files, tokenizer.json
    files, token-id texts, Hessian/tokenizer strings);
  * hand-assembled valid files covering every dtype / component / layout branch;
  * "micro" models (1 decoder layer, hidden 32) for model_dir, and fp4q's own exports of them
    (compressed-tensors NVFP4 / MXFP4 / INT4, W4A4, Hadamard; fp-quant NVFP4 / MXFP4) for the
    importer — these need a built fp4q binary: pass it as --fp4q (tools/fuzz.sh does).

Multi-file inputs are "config.json" + b"\\0" + "model.safetensors" (tests/fuzz/fuzz_targets.h).

    python3 tools/make_fuzz_seeds.py --fp4q build-h11/fp4q [--out tests/fuzz/seeds]
"""
import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def st_bytes(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes). Returns a safetensors file."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


def bf16(vals):
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


def f16(vals):
    return struct.pack("<%de" % len(vals), *vals)


class Seeds:
    def __init__(self, out):
        self.out = out

    def add(self, target, content, name=None):
        if isinstance(content, str):
            content = content.encode()
        d = os.path.join(self.out, target)
        os.makedirs(d, exist_ok=True)
        name = name or hashlib.sha1(content).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(content)


def micro_model(arch="llama", dtype="BF16", tie=False, seed=0):
    """A 1-layer model with hidden 32 (every Linear's in_features divisible by 32)."""
    rng = random.Random(seed)
    H, I, V, heads, kv, hd = 32, 64, 16, 2, 1, 16
    archs = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
             "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    cfg = {"architectures": [archs[arch]], "model_type": arch, "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": 1, "num_attention_heads": heads,
           "num_key_value_heads": kv, "head_dim": hd, "vocab_size": V, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": tie,
           "hidden_act": "silu", "torch_dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
           "bos_token_id": 1, "eos_token_id": 2}
    conv = {"BF16": bf16, "F16": f16, "F32": f32}[dtype]

    def t(name, shape, scale=0.2, const=None):
        n = 1
        for s in shape:
            n *= s
        vals = [const] * n if const is not None else [rng.gauss(0, scale) for _ in range(n)]
        return (name, dtype, shape, conv(vals))

    p = "model.layers.0."
    ts = [t("model.embed_tokens.weight", [V, H]), t("model.norm.weight", [H], const=1.0),
          t(p + "input_layernorm.weight", [H], const=1.0),
          t(p + "post_attention_layernorm.weight", [H], const=1.0),
          t(p + "self_attn.q_proj.weight", [heads * hd, H]), t(p + "self_attn.k_proj.weight", [kv * hd, H]),
          t(p + "self_attn.v_proj.weight", [kv * hd, H]), t(p + "self_attn.o_proj.weight", [H, heads * hd]),
          t(p + "mlp.gate_proj.weight", [I, H]), t(p + "mlp.up_proj.weight", [I, H]),
          t(p + "mlp.down_proj.weight", [H, I])]
    if arch == "qwen2":
        ts += [t(p + "self_attn.q_proj.bias", [heads * hd]), t(p + "self_attn.k_proj.bias", [kv * hd]),
               t(p + "self_attn.v_proj.bias", [kv * hd])]
    if arch == "qwen3":
        ts += [t(p + "self_attn.q_norm.weight", [hd], const=1.0), t(p + "self_attn.k_norm.weight", [hd], const=1.0)]
    if not tie:
        ts.append(t("lm_head.weight", [V, H]))
    return cfg, st_bytes(ts, {"format": "pt"})


def dir_seed(cfg_text, st):
    if isinstance(cfg_text, dict):
        cfg_text = json.dumps(cfg_text, indent=1)
    return cfg_text.encode() + b"\0" + st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fuzz", "seeds"))
    ap.add_argument("--fp4q", default=None, help="fp4q binary for the importer seeds")
    a = ap.parse_args()
    if os.path.isdir(a.out):
        shutil.rmtree(a.out)
    S = Seeds(a.out)
    td = os.path.join(ROOT, "tests", "data")

    # ---- safetensors: fixtures + every dtype, scalars, empty tensors, gaps, metadata ----
    for p in sorted(glob.glob(os.path.join(td, "bad_safetensors", "**", "*.safetensors"), recursive=True)):
        S.add("safetensors", open(p, "rb").read())
    tens = []
    for i, (dt, sz) in enumerate(DTYPE_SIZE.items()):
        tens.append(("t%d_%s" % (i, dt.lower()), dt, [2, 3], bytes(range(i, i + 6 * sz))))
    S.add("safetensors", st_bytes(tens, {"format": "pt", "k": "v"}), "all_dtypes")
    S.add("safetensors", st_bytes([("scalar", "F32", [], f32([1.5])), ("empty", "BF16", [0, 4], b""),
                                   ("v", "F16", [4], f16([1, -2, 0.5, 65504]))]), "scalar_empty")
    S.add("safetensors", st_bytes([]), "no_tensors")
    S.add("safetensors", st_bytes([("w", "F32", [2, 2], f32([1, 2, 3, 4]))], {}) + b"trailing", "trailing")

    # ---- hessian: valid fp4q-hessians files ----
    def hess(n, samples, mods=("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")):
        ts = []
        for m in mods:
            h = [0.0] * (n * n)
            for i in range(n):
                for j in range(n):
                    h[i * n + j] = (2.0 if i == j else 0.25 / (1 + abs(i - j)))
            ts.append((m + ".hessian", "F32", [n, n], f32(h)))
            ts.append((m + ".hessian_samples", "I64", [1], struct.pack("<q", samples)))
        return st_bytes(ts, {"format": "fp4q-hessians", "version": "1"})
    S.add("hessian", hess(4, 128), "valid4")
    S.add("hessian", hess(16, 1, ("model.layers.3.mlp.gate_proj",)), "valid16")
    S.add("hessian", hess(2, 0), "zero_samples")
    S.add("hessian", st_bytes([("x.hessian", "F32", [1, 1], f32([float("nan")])),
                               ("x.hessian_samples", "I64", [1], struct.pack("<q", -3))],
                              {"format": "fp4q-hessians"}), "nan")
    S.add("hessian", open(os.path.join(td, "bad_safetensors", "good.safetensors"), "rb").read(), "not_hessian")

    # ---- index: the fixture indexes + ones pointing at the fuzz target's fixed shards ----
    for p in sorted(glob.glob(os.path.join(td, "bad_safetensors", "index_*", "*.json"))):
        S.add("index", open(p, "rb").read())
    good_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                "c": "model-00002-of-00002.safetensors"}
    S.add("index", json.dumps({"metadata": {"total_size": 30}, "weight_map": good_map}, indent=2), "good")
    for shard in ("garbage.safetensors", "dir.safetensors", "fifo.safetensors", "missing.safetensors",
                  "../x.safetensors", "/etc/passwd", "sub/./model.safetensors", ""):
        m = dict(good_map)
        m["c"] = shard
        S.add("index", json.dumps({"weight_map": m}))
    S.add("index", json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}), "unlisted")
    S.add("index", '{"weight_map": {"a": 3}}', "not_string")

    # ---- config: every config.json in the repository + micro models + variants ----
    for p in sorted(glob.glob(os.path.join(ROOT, "data", "models", "*", "config.json")) +
                    glob.glob(os.path.join(td, "tiny_models", "*", "config.json"))):
        S.add("config", open(p, "rb").read())
    for arch in ("llama", "mistral", "qwen2", "qwen3"):
        cfg, _ = micro_model(arch)
        S.add("config", json.dumps(cfg), "micro_" + arch)
    cfg, _ = micro_model("llama")
    v = dict(cfg, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    S.add("config", json.dumps(v), "rope_scaling")
    v = dict(cfg, architectures=None, model_type="qwen2", sliding_window=16, use_sliding_window=True,
             max_window_layers=0, layer_types=["sliding_attention"])
    S.add("config", json.dumps(v), "sliding")
    v = dict(cfg, quantization_config={"quant_method": "compressed-tensors"}, eos_token_id=[2, 3])
    S.add("config", json.dumps(v), "quantized")

    # ---- tokenizer: fixture tokenizers (alone and with a tokenizer_config.json) + small ones ----
    sd = os.path.join(ROOT, "data", "models", "stories260K")
    tc = open(os.path.join(sd, "tokenizer_config.json"), "rb").read()
    S.add("tokenizer", open(os.path.join(sd, "tokenizer.json"), "rb").read(), "stories260K")
    S.add("tokenizer", open(os.path.join(sd, "tokenizer.json"), "rb").read() + b"\0" + tc, "stories260K_cfg")
    for p in sorted(glob.glob(os.path.join(td, "tokenizer", "*.tokenizer.json"))):
        S.add("tokenizer", open(p, "rb").read(), os.path.basename(p).split(".")[0])

    def small_tok(normalizer, pre, post, decoder, extra_model=None, added=None):
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
        for ch in "abcdefghijklmnopqrstuvwxyz0123456789 ,.!?'\u2581\u0120":
            vocab.setdefault(ch, len(vocab))
        for i in range(256):
            vocab.setdefault("<0x%02X>" % i, len(vocab))
        merges = ["h e", "l l", "he ll", "hell o", "w o", "wo r", "wor l", "worl d"]
        for m in merges:
            vocab.setdefault(m.replace(" ", ""), len(vocab))
        model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "vocab": vocab,
                 "merges": merges}
        model.update(extra_model or {})
        return json.dumps({"version": "1.0", "truncation": None, "padding": None,
                           "added_tokens": added if added is not None else [
                               {"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False,
                                "normalized": False, "special": True},
                               {"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
                                "normalized": False, "special": True},
                               {"id": 2, "content": "</s>", "single_word": True, "lstrip": True, "rstrip": True,
                                "normalized": True, "special": True}],
                           "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post,
                           "decoder": decoder, "model": model})
    tp = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                   {"Sequence": {"id": "A", "type_id": 0}}],
          "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
          "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    norm_seq = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        {"type": "Strip", "strip_left": True, "strip_right": False}, {"type": "NFC"},
        {"type": "Replace", "pattern": {"Regex": "[0-9]+"}, "content": "7"}]}
    pre_seq = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "Punctuation", "behavior": "Isolated"},
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"String": "o"}, "behavior": "Contiguous", "invert": True},
        {"type": "WhitespaceSplit"}, {"type": "Whitespace"},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    dec_seq = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        {"type": "ByteLevel"}, {"type": "BPEDecoder", "suffix": "</w>"}]}
    S.add("tokenizer", small_tok(norm_seq, None, tp, dec_seq), "small_sp")
    S.add("tokenizer", small_tok(None, pre_seq, {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "trim_offsets": False}, {"type": "RobertaProcessing", "sep": ["</s>", 2],
                                                        "cls": ["<s>", 1], "trim_offsets": True,
                                                        "add_prefix_space": True}]}, dec_seq,
        {"ignore_merges": True, "merges": [["h", "e"], ["l", "l"]]}), "small_pre")
    S.add("tokenizer", small_tok(None, {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True},
                                 {"type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1]}, None,
                                 {"continuing_subword_prefix": "##", "end_of_word_suffix": "</w>",
                                  "byte_fallback": False}, []), "small_bert")
    S.add("tokenizer", small_tok(None, None, None, None) + "\0" + json.dumps(
        {"bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "</s>",
         "add_bos_token": False, "add_eos_token": True}), "small_cfg")

    # ---- ids ----
    S.add("ids", "1 2 3\n4,5,6 # comment\n\t7\r\n", "text")
    S.add("ids", "[1, [2, 3], [[4]], 5]", "json")
    S.add("ids", "[]", "empty_json")
    S.add("ids", "+12 2147483647, 0", "limits")
    ids = json.load(open(os.path.join(td, "tiny_models", "ppl_ids.json")))["ids"][:400]
    S.add("ids", json.dumps(ids), "ppl_ids")

    # ---- tokenize: one selector byte + text ----
    strings = json.load(open(os.path.join(td, "tokenizer", "strings.json")))["strings"]
    for i, s in enumerate(strings[:40]):
        S.add("tokenize", bytes([i % 16]) + s.encode("utf-8"))

    # ---- model_dir: micro models ----
    micro = {}
    for arch in ("llama", "mistral", "qwen2", "qwen3"):
        for dt in ("BF16", "F32"):
            cfg, st = micro_model(arch, dt, tie=(arch == "qwen3"))
            micro[(arch, dt)] = (cfg, st)
            if dt == "BF16" or arch == "llama":
                S.add("model_dir", dir_seed(cfg, st), "micro_%s_%s" % (arch, dt.lower()))

    # ---- importer: fp4q's exports of the micro llama ----
    if a.fp4q:
        tmp = tempfile.mkdtemp(prefix="fp4q-seeds-")
        try:
            cfg, st = micro[("llama", "BF16")]
            mdir = os.path.join(tmp, "model")
            os.makedirs(mdir)
            json.dump(cfg, open(os.path.join(mdir, "config.json"), "w"), indent=2)
            open(os.path.join(mdir, "model.safetensors"), "wb").write(st)
            ids = os.path.join(tmp, "ids.txt")  # calibration for W4A4 (activation global scale)
            open(ids, "w").write(" ".join(str((i * 7) % 16) for i in range(200)))
            calib = ["--calib-ids", ids, "--samples", "2", "--seqlen", "16"]
            runs = {"ct_nvfp4": ["--format", "nvfp4"],
                    "ct_nvfp4_w4a4_had16": ["--format", "nvfp4", "--activations", "fp4", "--hadamard", "16"] + calib,
                    "ct_mxfp4_had32": ["--format", "mxfp4", "--hadamard", "32"],
                    "ct_int4": ["--format", "int4"],
                    "fpq_nvfp4_had16": ["--format", "nvfp4", "--export", "fp-quant", "--hadamard", "16", "--activations", "fp4"] + calib,
                    "fpq_mxfp4_had32": ["--format", "mxfp4", "--export", "fp-quant", "--hadamard", "32"],
                    "fpq_pseudo": ["--format", "nvfp4", "--export", "fp-quant-pseudo", "--activations", "fp4"] + calib,
                    "dequant": ["--format", "nvfp4", "--export", "dequant"]}
            for name, extra in runs.items():
                out = os.path.join(tmp, name)
                subprocess.run([a.fp4q, "-q", "quantize", mdir, out, "--method", "rtn"] + extra, check=True)
                S.add("importer", dir_seed(open(os.path.join(out, "config.json")).read(),
                                           open(os.path.join(out, "model.safetensors"), "rb").read()), name)
        finally:
            shutil.rmtree(tmp)
    else:
        print("make_fuzz_seeds: no --fp4q, importer seeds not written", file=sys.stderr)
    for t in sorted(os.listdir(a.out)):
        files = os.listdir(os.path.join(a.out, t))
        size = sum(os.path.getsize(os.path.join(a.out, t, f)) for f in files)
        print("%-12s %3d seeds %8d bytes" % (t, len(files), size))


if __name__ == "__main__":
    main()
