#!/usr/bin/env python3
"""Train fp4q's evaluation model: a small Llama (LlamaForCausalLM) with a byte-level BPE tokenizer.

Runs on the GPU machine (torch + transformers + tokenizers; no network). Input: a directory of
UTF-8 .txt files (tools/make_train_corpus.sh; the evaluation texts WikiText-2 test and Frankenstein
are not in it). Output in --out ($OUT): the model directory packed as a deterministic tar split
into pieces of at most 15 MiB (<name>.tar.partNN) and train_log.json (arguments, versions, corpus
SOURCE, parameter count, steps, time, loss curve, validation curve, final validation loss,
sha256 of the tar and of every piece). Reassemble here with tools/reassemble_model.sh.

Model (defaults): hidden 512, 8 layers, 8 heads / 4 KV heads (head_dim 64), intermediate 1024,
vocab 8192, tied embeddings, max positions 512: 23.1M parameters, stored bf16 (46 MB); every
Linear's in_features (512, 1024) is divisible by 128, so every rotation size up to 128 and both
FP4 group sizes apply. Tokenizer: tokenizers BPE, ByteLevel pre-tokenizer (GPT-2 regex,
add_prefix_space false), ByteLevel decoder, TemplateProcessing post-processor "<|bos|> $A"
(encode(text) starts with BOS), specials <|bos|> = 0, <|eos|> = 1 — all components fp4q's
tokenizer reads (src/model/tokenizer.cpp).

Determinism: fixed seeds (python, torch, the batch sampler's own generator), deterministic
algorithms (warn-only), fixed data order. --steps auto measures the step time on the first steps
and picks the step count that fits --time-budget (logged: re-running with --steps <that number>
reproduces the run; the learning rate of the measured steps does not depend on the total because
they are inside the fixed warm-up). The checkpoint kept is the one with the best validation loss
(evaluated every --eval-every steps on fixed held-out windows: the last --val-fraction of every
corpus file).

  python3 tools/train_eval_model.py --corpus .device/train-corpus --out "$OUT" [--time-budget 225]
  python3 tools/train_eval_model.py --corpus DIR --out X --dry-run    # stdlib only: plan + corpus check
"""
import argparse
import hashlib
import io
import json
import math
import os
import random
import sys
import tarfile
import time

PART_BYTES = 15 * 1024 * 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="directory of .txt files (+ SOURCE.txt)")
    p.add_argument("--out", required=True, help="output directory ($OUT)")
    p.add_argument("--name", default="fp4q-llama-23m", help="model directory name inside the tar")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--steps", default="auto", help="number of optimizer steps, or 'auto' (fit --time-budget)")
    p.add_argument("--max-steps", type=int, default=20000, help="upper bound for --steps auto")
    p.add_argument("--time-budget", type=float, default=225.0, help="seconds of training for --steps auto")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--val-windows", type=int, default=64)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--dry-run", action="store_true", help="check arguments and corpus, print the plan, exit")
    a = p.parse_args(argv)
    if a.steps != "auto":
        a.steps = int(a.steps)
        if a.steps < 1:
            p.error("--steps must be >= 1 or auto")
    for name in ("hidden", "intermediate"):
        if getattr(a, name) % 128:
            p.error(f"--{name} must be divisible by 128 (every Linear's in_features)")
    if a.hidden % a.heads or a.heads % a.kv_heads:
        p.error("--hidden must be divisible by --heads and --heads by --kv-heads")
    if a.warmup < 50:
        p.error("--warmup must be >= 50 (the auto step-time probe runs inside the warm-up)")
    return a


def param_count(a):
    """Parameters of the Llama with tied embeddings (no biases)."""
    hd = a.hidden // a.heads
    attn = a.hidden * (a.heads * hd) * 2 + a.hidden * (a.kv_heads * hd) * 2
    mlp = 3 * a.hidden * a.intermediate
    norms = 2 * a.hidden
    return a.vocab * a.hidden + a.layers * (attn + mlp + norms) + a.hidden


def read_corpus(d, val_fraction):
    """[(name, train_text, val_text)], files sorted by name; val = last fraction, cut at a line."""
    files = sorted(f for f in os.listdir(d) if f.endswith(".txt") and f != "SOURCE.txt")
    if not files:
        raise SystemExit(f"no .txt files in {d}")
    out = []
    for f in files:
        t = open(os.path.join(d, f), encoding="utf-8").read()
        cut = t.rfind("\n", 0, int(len(t) * (1 - val_fraction)))
        cut = cut + 1 if cut > 0 else int(len(t) * (1 - val_fraction))
        out.append((f, t[:cut], t[cut:]))
    return out


def chunks(text, size=1 << 16):
    """Line-aligned pieces of about `size` characters (tokenizer training/encoding units)."""
    i = 0
    while i < len(text):
        j = text.find("\n", i + size)
        j = len(text) if j < 0 else j + 1
        yield text[i:j]
        i = j


def tar_bytes(root, name):
    """Deterministic tar of root/ as name/ (sorted, mtime 0, uid/gid 0, mode 0644)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for f in sorted(os.listdir(root)):
            data = open(os.path.join(root, f), "rb").read()
            ti = tarfile.TarInfo(f"{name}/{f}")
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def main(argv=None):
    a = parse_args(argv)
    corpus = read_corpus(a.corpus, a.val_fraction)
    plan = {"params": param_count(a), "files": [(f, len(tr), len(va)) for f, tr, va in corpus]}
    print(json.dumps(plan, indent=1), flush=True)
    if a.dry_run:
        return 0
    t_start = time.time()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import tokenizers
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        PreTrainedTokenizerFast = None

    random.seed(a.seed)
    torch.manual_seed(a.seed)
    torch.cuda.manual_seed_all(a.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cuda")
    log = {"args": vars(a), "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                         "tokenizers": tokenizers.__version__, "gpu": torch.cuda.get_device_name(0)}}
    src = os.path.join(a.corpus, "SOURCE.txt")
    log["corpus_source"] = open(src).read() if os.path.exists(src) else None
    log["corpus_files"] = plan["files"]

    # ---- tokenizer ----
    t0 = time.time()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=a.vocab, min_frequency=2, show_progress=False,
                                  special_tokens=["<|bos|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((c for _, tr, _ in corpus for c in chunks(tr)), trainer=trainer)
    bos, eos = tok.token_to_id("<|bos|>"), tok.token_to_id("<|eos|>")
    assert (bos, eos) == (0, 1), (bos, eos)
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B",
                                                       special_tokens=[("<|bos|>", bos)])
    vocab = tok.get_vocab_size()
    log["tokenizer"] = {"vocab": vocab, "seconds": time.time() - t0}

    def encode(text):
        ids = []
        for enc in tok.encode_batch(list(chunks(text)), add_special_tokens=False):
            ids.extend(enc.ids)
        return ids
    train_ids, val_ids = [], []
    for f, tr, va in corpus:
        train_ids += encode(tr) + [eos]
        val_ids += encode(va) + [eos]
    log["tokens"] = {"train": len(train_ids), "val": len(val_ids), "encode_seconds": time.time() - t0}
    print(f"tokenizer: vocab {vocab}; {len(train_ids)} train / {len(val_ids)} val tokens", flush=True)
    train = torch.tensor(train_ids, dtype=torch.long)
    val = torch.tensor(val_ids, dtype=torch.long)
    T = a.seqlen
    nval = min(a.val_windows, (len(val_ids) - 1) // (T - 1))
    # validation windows: BOS + T-1 consecutive tokens, non-overlapping, fixed
    val_x = torch.stack([torch.cat([torch.tensor([bos]), val[i * (T - 1):(i + 1) * (T - 1)]]) for i in range(nval)]).to(dev)

    # ---- model ----
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      head_dim=a.hidden // a.heads, max_position_embeddings=T, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
                      attention_bias=False, mlp_bias=False, hidden_act="silu", initializer_range=0.02,
                      use_cache=False)
    model = LlamaForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log["params"] = n_params
    print(f"model: {n_params} parameters ({param_count(a)} expected)", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=True)
    gen = torch.Generator().manual_seed(a.seed)
    starts_max = len(train_ids) - (T - 1)

    def batch():
        s = torch.randint(0, starts_max, (a.batch,), generator=gen)
        x = torch.stack([train[i:i + T - 1] for i in s.tolist()])
        x = torch.cat([torch.full((a.batch, 1), bos, dtype=torch.long), x], dim=1)
        return x.to(dev, non_blocking=True)

    @torch.no_grad()
    def val_loss(m, dtype=torch.bfloat16):
        m.eval()
        tot, cnt = 0.0, 0
        for i in range(0, nval, 8):
            x = val_x[i:i + 8]
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                logits = m(input_ids=x).logits
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                    x[:, 1:].reshape(-1), reduction="sum")
            tot += float(nll)
            cnt += x[:, 1:].numel()
        m.train()
        return tot / cnt

    def lr_at(step, total):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        p = (step - a.warmup) / max(1, total - a.warmup)
        return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    total = a.steps if a.steps != "auto" else a.max_steps
    probe = (10, 40)
    curve, vcurve = [], []
    best = (float("inf"), -1, None)
    model.train()
    torch.cuda.synchronize()
    t_train = time.time()
    step = 0
    while step < total:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total)
        x = batch()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 10 == 0 or step == 1:
            curve.append([step, round(float(loss), 5), round(float(gn), 4), lr_at(step - 1, total)])
        if a.steps == "auto" and step == probe[0]:
            torch.cuda.synchronize()
            t_probe = time.time()
        if a.steps == "auto" and step == probe[1]:
            torch.cuda.synchronize()
            dt = (time.time() - t_probe) / (probe[1] - probe[0])
            evals = a.time_budget / (dt * a.eval_every) + 1
            left = a.time_budget - (time.time() - t_train) - evals * 0.5
            total = max(a.warmup + 100, min(a.max_steps, (step + int(left / dt)) // 50 * 50))
            log["auto_steps"] = {"seconds_per_step": dt, "steps": total}
            print(f"auto: {dt * 1000:.1f} ms/step -> {total} steps (re-run with --steps {total})", flush=True)
        if step % a.eval_every == 0 or step == total:
            vl = val_loss(model)
            vcurve.append([step, round(vl, 5), round(time.time() - t_train, 1)])
            print(f"step {step}/{total}: loss {float(loss):.4f} val {vl:.4f} ({time.time() - t_train:.0f} s)", flush=True)
            if vl < best[0]:
                best = (vl, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
    torch.cuda.synchronize()
    log["train_seconds"] = time.time() - t_train
    log["steps"] = total
    log["tokens_seen"] = total * a.batch * (T - 1)
    log["loss_curve"] = curve
    log["val_curve"] = vcurve
    model.load_state_dict(best[2])
    log["best_step"] = best[1]
    log["val_loss_best_bf16_autocast"] = best[0]

    # ---- save (bf16) ----
    import tempfile
    tmp = tempfile.mkdtemp()
    mdir = os.path.join(tmp, a.name)
    model = model.to(torch.bfloat16)
    model.config.use_cache = True
    model.save_pretrained(mdir, max_shard_size="2GB")  # safetensors (the default)
    try:
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                         model_max_length=T, clean_up_tokenization_spaces=False)
        hf_tok.save_pretrained(mdir)
    except Exception as ex:  # minimal config by hand
        log["tokenizer_config_fallback"] = repr(ex)
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
                   "model_max_length": T, "clean_up_tokenization_spaces": False},
                  open(os.path.join(mdir, "tokenizer_config.json"), "w"), indent=2)
    tok.save(os.path.join(mdir, "tokenizer.json"))  # the tokenizers library's own file, post-processor included
    tc_path = os.path.join(mdir, "tokenizer_config.json")
    tc = json.load(open(tc_path))
    for k in ("add_bos_token", "add_eos_token"):   # BOS comes from the post-processor, for every reader
        tc.pop(k, None)
    json.dump(tc, open(tc_path, "w"), indent=2, sort_keys=True)
    for f in os.listdir(mdir):
        if f not in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json"):
            os.remove(os.path.join(mdir, f))
    if log["corpus_source"]:
        open(os.path.join(mdir, "TRAINING_DATA.txt"), "w").write(log["corpus_source"])

    # ---- checks on the saved directory (as a user would load it) ----
    m2 = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).to(dev)
    t2 = AutoTokenizer.from_pretrained(mdir)
    sample = "The quick brown fox, said Mr. Smith. 12345\n\n  Spaces  and\ttabs ünïcödé"
    ids_hf = t2(sample)["input_ids"]
    ids_tk = tok.encode(sample).ids
    log["check"] = {"hf_ids_equal_tokenizers": ids_hf == ids_tk, "starts_with_bos": ids_tk[:1] == [bos],
                    "decode_roundtrip": tok.decode(tok.encode(sample, add_special_tokens=False).ids) == sample,
                    "val_loss_saved_fp32": val_loss(m2, torch.float32),
                    "val_loss_saved_bf16_autocast": val_loss(m2, torch.bfloat16)}
    log["check"]["val_ppl_saved_fp32"] = math.exp(log["check"]["val_loss_saved_fp32"])
    print("check:", json.dumps(log["check"]), flush=True)

    # ---- pack ----
    data = tar_bytes(mdir, a.name)
    os.makedirs(a.out, exist_ok=True)
    parts = []
    for k in range(0, len(data), PART_BYTES):
        pn = f"{a.name}.tar.part{k // PART_BYTES:02d}"
        open(os.path.join(a.out, pn), "wb").write(data[k:k + PART_BYTES])
        parts.append({"file": pn, "bytes": len(data[k:k + PART_BYTES]),
                      "sha256": hashlib.sha256(data[k:k + PART_BYTES]).hexdigest()})
    log["package"] = {"name": a.name, "tar_bytes": len(data), "tar_sha256": hashlib.sha256(data).hexdigest(),
                      "parts": parts, "files": sorted(os.listdir(mdir)),
                      "model_safetensors_sha256": hashlib.sha256(open(os.path.join(mdir, "model.safetensors"), "rb").read()).hexdigest()}
    log["total_seconds"] = time.time() - t_start
    json.dump(log, open(os.path.join(a.out, "train_log.json"), "w"), indent=1)
    print(f"wrote {len(parts)} parts ({len(data)} bytes) and train_log.json to {a.out} in {log['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
