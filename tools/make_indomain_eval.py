#!/usr/bin/env python3
"""In-domain held-out evaluation ids of the evaluation model: the validation split of its training mix.

tools/train_eval_model.py holds out the last --val-fraction (default 1 %) of every corpus file, cut
at a line start (read_corpus), and never trains on it: its training windows are drawn from the
train part only, its tokenizer is trained on the train part only. Its validation stream is, over
the files in name order, encode(chunk) for every line-aligned ~64K-character chunk of the held-out
part (chunks(); add_special_tokens=False), then one <|eos|>. This script rebuilds exactly that
stream with fp4q's tokenizer: it imports read_corpus() and chunks() from train_eval_model.py (so the
split cannot drift from the training script), runs `fp4q tokenize --no-bos` on each chunk, appends
the model's eos_token_id after each file, and prepends one BOS (as `fp4q tokenize` / `fp4q eval`
do for a text). --expect-tokens (train_log.json's tokens.val) checks the count against the one
the training run logged.

  python3 tools/make_indomain_eval.py --corpus .device/train-corpus --model models/fp4q-llama-23m \\
      --out WORK/eval-indomain.json [--fp4q build/fp4q] [--expect-tokens 62390] [--text-out held-out.txt]

Output: one JSON array of ids (`fp4q tokenize` format). Standard library only (plus the fp4q binary).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_eval_model import chunks, read_corpus  # noqa: E402  (stdlib-only at import time)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="the training corpus directory (tools/make_train_corpus.sh)")
    p.add_argument("--model", required=True, help="the trained model directory (its tokenizer.json and config.json)")
    p.add_argument("--out", required=True, help="JSON array of ids")
    p.add_argument("--fp4q", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "fp4q"))
    p.add_argument("--val-fraction", type=float, default=0.01, help="as train_eval_model.py --val-fraction")
    p.add_argument("--expect-tokens", type=int, default=0,
                   help="the training run's validation token count (train_log.json tokens.val); 0 = no check")
    p.add_argument("--text-out", help="also write the held-out text (files in order, as split)")
    a = p.parse_args(argv)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    bos, eos = cfg.get("bos_token_id"), cfg.get("eos_token_id")
    if not isinstance(bos, int) or not isinstance(eos, int):
        raise SystemExit(f"{a.model}/config.json: need integer bos_token_id and eos_token_id")
    corpus = read_corpus(a.corpus, a.val_fraction)
    ids, per_file = [], []
    with tempfile.TemporaryDirectory() as tmp:
        txt, js = os.path.join(tmp, "chunk.txt"), os.path.join(tmp, "chunk.json")
        for name, _train, val in corpus:
            n0 = len(ids)
            for c in chunks(val):
                with open(txt, "w", encoding="utf-8", newline="") as f:
                    f.write(c)
                subprocess.run([a.fp4q, "-q", "tokenize", a.model, txt, "--no-bos", "-o", js], check=True)
                ids += json.load(open(js))
            ids.append(eos)
            per_file.append((name, len(val), len(ids) - n0))
    for name, chars, n in per_file:
        print(f"{name}: {chars} held-out characters, {n} ids (eos included)", file=sys.stderr)
    print(f"validation stream: {len(ids)} ids (+1 BOS)", file=sys.stderr)
    if a.expect_tokens and len(ids) != a.expect_tokens:
        raise SystemExit(f"validation stream has {len(ids)} ids, the training run logged {a.expect_tokens}")
    with open(a.out, "w") as f:
        f.write("[" + ",".join(str(i) for i in [bos] + ids) + "]\n")
    if a.text_out:
        with open(a.text_out, "w", encoding="utf-8", newline="") as f:
            for _name, _train, val in corpus:
                f.write(val)
    return 0


if __name__ == "__main__":
    sys.exit(main())
