#!/usr/bin/env python3
"""Markdown tables of the fp4q vs FP-Quant side-by-side run (issue 9) from its result files:
fp4q.tsv (tools/fpquant_side_by_side.sh fp4q) and one or more fpquant JSONL files (... fpquant),
e.g. the committed tests/data/side_by_side/llama23m-2026-12-03/:

  python3 tools/side_by_side_summary.py DIR            (DIR/fp4q.tsv, DIR/fpquant-*.jsonl, DIR/fp4q/*.report.json if present)

Perplexity change vs the unquantized model in % (fp32 evaluation of both tools), per text and cell;
FP-Quant columns: as-is (float32 model, its in-place Hessian bug active), -fix (float32, bug fixed by
tools/fpquant_shim.py --fix-inplace-hessian), -bf16 (FP-Quant's default dtype for a bf16 checkpoint).
Then the mean proxy loss tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) over the quantized Linears, each tool on its own
Hessians. Where the runs scored KL divergence to the unquantized model (fp4q.tsv columns kl, kl_se,
top1 from `fp4q eval --kl-reference`; "kl" objects of tools/fpquant_shim.py --kl-reference, fp32
evaluation), also per text: mean KL(P_unquantized || P_cell) per token ± its standard error, and
top-1 agreement. Every fp4q*.tsv in DIR is read (later files add rows). No third-party packages."""
import csv
import glob
import json
import os
import statistics
import sys


def main():
    d = sys.argv[1]
    fq, proxy_fq, kl_fq = {}, {}, {}
    for tsv in sorted(glob.glob(os.path.join(d, "fp4q*.tsv"))):
        for r in csv.DictReader(open(tsv), delimiter="\t"):
            fq[(r["cell"], r["eval"])] = float(r["ppl"])
            if r.get("mean_h_err", "-") not in ("-", "", None):
                proxy_fq[r["cell"]] = float(r["mean_h_err"])
            if r.get("kl", "-") not in ("-", "", None):
                kl_fq[(r["cell"], r["eval"])] = {"kl": float(r["kl"]), "kl_se": float(r["kl_se"]),
                                                 "top1": float(r["top1"])}
    fpq = {}
    for f in sorted(glob.glob(os.path.join(d, "fpquant*.jsonl"))):
        for line in open(f):
            x = json.loads(line)
            if x.get("status") == "ok":
                fpq[x["tag"]] = x
    evals = sorted({e for (_, e) in fq})
    cols_fq = [("rtn", "fp4q RTN"), ("gptq", "fp4q GPTQ"), ("mrgptq", "fp4q MR-GPTQ")]
    cols_fpq = [("mrgptq", "FPQ MR-GPTQ as-is"), ("mrgptq-fix", "FPQ MR-GPTQ fix"),
                ("mrgptq-fused-fix", "FPQ MR-GPTQ fused fix"), ("mrgptq-bf16", "FPQ MR-GPTQ bf16"),
                ("gptq-fix", "FPQ GPTQ fix"), ("rtn", "FPQ RTN")]

    def fpq_ppl(tag, e):
        x = fpq.get(tag)
        if not x:
            return None
        base = fpq["unquantized-bf16" if tag.endswith("-bf16") and "unquantized-bf16" in fpq else "unquantized"]
        return 100 * (x["eval"][e]["fp32"]["ppl"] / base["eval"][e]["fp32"]["ppl"] - 1)

    for e in evals:
        u = fq[("unquantized", e)]
        uf = fpq["unquantized"]["eval"][e]["fp32"]["ppl"] if "unquantized" in fpq else float("nan")
        print(f"\n{e}: unquantized fp4q {u:.4f}, FP-Quant/transformers {uf:.4f}\n")
        print("| cell | " + " | ".join(c for _, c in cols_fq + cols_fpq) + " |")
        print("|---" * (1 + len(cols_fq) + len(cols_fpq)) + "|")
        for fmt in ("nvfp4", "mxfp4"):
            for a in ("w4a16", "w4a4"):
                cell = f"{fmt}-{a}"
                row = []
                for m, _ in cols_fq:
                    v = fq.get((f"{cell}-{m}", e))
                    row.append(f"{100 * (v / u - 1):+.2f}" if v else "n/a")
                for m, _ in cols_fpq:
                    v = fpq_ppl(f"{cell}-{m}", e)
                    row.append(f"{v:+.2f}" if v is not None else "n/a")
                print(f"| {fmt.upper()} {a.upper()} | " + " | ".join(row) + " |")
    kl_fpq = {(tag, e): x["eval"][e]["fp32"]["kl"] for tag, x in fpq.items() for e in x.get("eval", {})
              if "kl" in x["eval"][e].get("fp32", {})}
    if kl_fq or kl_fpq:
        kl_tables(kl_fq, kl_fpq, sorted({e for (_, e) in kl_fq} | {e for (_, e) in kl_fpq}))
    print("\nmean proxy loss over the quantized Linears (each tool's own Hessians):\n")
    print("| cell | fp4q | FPQ as-is | FPQ fix | FPQ bf16 |\n|---|---|---|---|---|")
    for fmt in ("nvfp4", "mxfp4"):
        for a in ("w4a16", "w4a4"):
            for m in ("gptq", "mrgptq"):
                c = f"{fmt}-{a}-{m}"
                row = [f"{proxy_fq[c]:.4e}" if c in proxy_fq else "n/a"]
                for s in ("", "-fix", "-bf16"):
                    x = fpq.get(c + s)
                    row.append(f"{statistics.mean(l['h_err'] for l in x['layers']):.4e}" if x and x["layers"] else "n/a")
                print(f"| {c} | " + " | ".join(row) + " |")


def kl_tables(kl_fq, kl_fpq, evals):
    """Per text: mean KL(P_unquantized || P_cell) per token in units of 1e-3 nats (± standard error),
    then top-1 agreement in %, for fp4q's and FP-Quant's cells (fp32 evaluation)."""
    cols = [("fp4q", "rtn", "fp4q RTN"), ("fp4q", "gptq", "fp4q GPTQ"), ("fp4q", "mrgptq", "fp4q MR-GPTQ"),
            ("fpq", "gptq-fix", "FPQ GPTQ fix"), ("fpq", "mrgptq-fix", "FPQ MR-GPTQ fix"),
            ("fpq", "gptq-bf16", "FPQ GPTQ bf16"), ("fpq", "mrgptq-bf16", "FPQ MR-GPTQ bf16")]

    def get(tool, cell, e):
        return (kl_fq if tool == "fp4q" else kl_fpq).get((cell, e))
    for what, fmt_val in (("KL(P_unquantized || P_cell) per token, 1e-3 nats (± standard error)",
                           lambda k: f"{1e3 * k['kl']:.3f} ± {1e3 * k['kl_se']:.3f}"),
                          ("top-1 agreement with the unquantized model, %",
                           lambda k: f"{100 * k['top1']:.2f}")):
        for e in evals:
            u = [get(t, "unquantized", e) for t in ("fp4q", "fpq")]
            zero = ", ".join(f"{n} unquantized {fmt_val(k)}" for n, k in zip(("fp4q", "FP-Quant"), u) if k)
            print(f"\n{e}: {what}{' (' + zero + ')' if zero else ''}\n")
            print("| cell | " + " | ".join(c for _, _, c in cols) + " |")
            print("|---" * (1 + len(cols)) + "|")
            for fmt in ("nvfp4", "mxfp4"):
                for a in ("w4a16", "w4a4"):
                    row = []
                    for tool, m, _ in cols:
                        k = get(tool, f"{fmt}-{a}-{m}", e)
                        row.append(fmt_val(k) if k else "n/a")
                    print(f"| {fmt.upper()} {a.upper()} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
