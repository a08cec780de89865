#!/usr/bin/env python3
"""Markdown table of fp4q vs FP-Quant from tools/fpquant_side_by_side.sh results (stdlib only).

Inputs: WORK/fp4q.tsv (fp4q side: cell, eval, ppl, nll, tokens, mean_h_err, mean_w_err) and
fpquant.jsonl (one JSON object per FP-Quant cell, written by tools/fpquant_shim.py). Every
perplexity is reported as the change against the SAME tool's unquantized model on the same ids
(fp4q: its own fp32 forward; FP-Quant: the transformers model, fp32 and bf16), so that both tools
are compared on what quantization costs. Ties within 0.05 percentage points count as ties (issue 9).

  python3 tools/side_by_side_table.py --fp4q WORK/fp4q.tsv --fpquant OUT/fpquant.jsonl [--dtype fp32]
"""
import argparse
import csv
import json
import sys

FORMATS = ["nvfp4", "mxfp4"]
ACTS = ["w4a16", "w4a4"]


def load_fp4q(path):
    res = {}  # (cell, eval) -> dict
    with open(path) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                row["ppl"] = float(row["ppl"])
            except (TypeError, ValueError):
                continue
            res[(row["cell"], row["eval"])] = row
    return res


def load_fpquant(path, dtype):
    res = {}  # (cell, eval) -> {"ppl":..., "h_err": mean}
    status = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            status[r["tag"]] = r.get("status", "?")
            hs = [l["h_err"] for l in r.get("layers", []) if l.get("h_err") == l.get("h_err")]
            for ev, d in r.get("eval", {}).items():
                if dtype in d:
                    res[(r["tag"], ev)] = {"ppl": d[dtype]["ppl"], "h_err": sum(hs) / len(hs) if hs else None}
    return res, status


def pct(p, base):
    return 100.0 * (p / base - 1.0)


def fmt_pct(v):
    return "n/a" if v is None else f"{v:+.2f}%"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp4q", required=True)
    ap.add_argument("--fpquant", required=True)
    ap.add_argument("--dtype", default="fp32", help="FP-Quant evaluation dtype column to use (fp32 | bf16)")
    a = ap.parse_args(argv)
    q4 = load_fp4q(a.fp4q)
    fq, status = load_fpquant(a.fpquant, a.dtype)
    evals = sorted({e for (_, e) in q4} | {e for (_, e) in fq})
    out = []
    for ev in evals:
        b4 = q4.get(("unquantized", ev), {}).get("ppl")
        bq = fq.get(("unquantized", ev), {}).get("ppl")
        out.append(f"### {ev} (unquantized: fp4q {b4 if b4 else 'n/a'}, FP-Quant/transformers {a.dtype} "
                   f"{f'{bq:.4f}' if bq else 'n/a'})\n")
        out.append("| cell | FP-Quant RTN | FP-Quant GPTQ | FP-Quant MR-GPTQ no rot. | FP-Quant MR-GPTQ | "
                   "FP-Quant MR-GPTQ fused gs | fp4q RTN | fp4q GPTQ | fp4q MR-GPTQ no rot. | fp4q MR-GPTQ | "
                   "fp4q MR-GPTQ mse-hess | fp4q MR-GPTQ vs best FP-Quant MR-GPTQ |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for fmt in FORMATS:
            for acts in ACTS:
                c = f"{fmt}-{acts}"

                def fpq(m):
                    r = fq.get((f"{c}-{m}", ev))
                    return pct(r["ppl"], bq) if r and bq else None

                def f4(m):
                    r = q4.get((f"{c}-{m}", ev))
                    return pct(r["ppl"], b4) if r and b4 else None
                mr = [v for v in (fpq("mrgptq"), fpq("mrgptq-fused")) if v is not None]
                ours = f4("mrgptq")
                if ours is None or not mr:
                    verdict = "n/a"
                else:
                    d = ours - min(mr)
                    verdict = f"{d:+.2f} pt " + ("(tie)" if abs(d) <= 0.05 else "(fp4q better)" if d < 0 else "(fp4q WORSE)")
                out.append(f"| {fmt.upper()} {acts.upper()} | {fmt_pct(fpq('rtn'))} | {fmt_pct(fpq('gptq'))} | "
                           f"{fmt_pct(fpq('mrgptq0'))} | {fmt_pct(fpq('mrgptq'))} | "
                           f"{fmt_pct(fpq('mrgptq-fused')) if fmt == 'nvfp4' else '-'} | "
                           f"{fmt_pct(f4('rtn'))} | {fmt_pct(f4('gptq'))} | {fmt_pct(f4('mrgptq0'))} | {fmt_pct(ours)} | "
                           f"{fmt_pct(f4('mrgptqh'))} | {verdict} |")
        out.append("")
    # proxy losses (mean over quantized Linears, undamped Hessian, rotated domain = unrotated)
    out.append("Mean proxy loss tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) over the quantized Linears (each tool's own Hessians):\n")
    out.append("| cell | FP-Quant | fp4q |")
    out.append("| --- | --- | --- |")
    ev0 = evals[0] if evals else None
    for fmt in FORMATS:
        for acts in ACTS:
            for m in ("rtn", "gptq", "mrgptq0", "mrgptq", "mrgptqh", "mrgptq-fused"):
                cell = f"{fmt}-{acts}-{m}"
                a_ = fq.get((cell, ev0), {}).get("h_err")
                b_ = q4.get((cell, ev0), {}).get("mean_h_err")
                if a_ is None and b_ in (None, "-"):
                    continue
                out.append(f"| {cell} | {'-' if a_ is None else f'{a_:.4e}'} | {b_ if b_ else '-'} |")
    bad = {k: v for k, v in status.items() if v != "ok"}
    if bad:
        out.append("\nFP-Quant cells that did not finish: " + ", ".join(f"{k} ({v})" for k, v in sorted(bad.items())))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
