#!/usr/bin/env python3
"""Token-by-token comparison of quantized models scored on the same ids against the same reference.

Inputs: per-token files written by `fp4q eval ... --kl-reference REF --dump-tokens FILE` or by
`tools/fpquant_shim.py --dump-tokens DIR` (TSV, header "window nll ref_nll kl", one line per scored
token, same ids and windows in every file).

For each file: the perplexity change against the reference, 100 * (exp(mean(nll - ref_nll)) - 1) %,
and the mean KL. For each pair (A, B), the paired difference of the per-token values, with a
standard error that treats the evaluation windows, not the tokens, as the independent units
(tokens of one window are correlated; the window means are close to independent): SE =
sd(window means of the difference) / sqrt(windows), the tokens of a window weighted by their count.
A difference is called "resolved" when it is at least 2 standard errors from 0.

  python3 tools/paired_compare.py NAME=FILE NAME=FILE [...]        # every pair against the first
  python3 tools/paired_compare.py --all-pairs NAME=FILE ...
  python3 tools/paired_compare.py --self-test
"""
import math
import sys


def read_tokens(path):
    """Returns (windows, nll, ref_nll, kl) lists from a --dump-tokens file."""
    w, q, r, k = [], [], [], []
    with open(path) as f:
        head = f.readline().split()
        if head != ["window", "nll", "ref_nll", "kl"]:
            raise SystemExit(f"{path}: header {head}, expected window nll ref_nll kl")
        for ln, line in enumerate(f, 2):
            p = line.split("\t")
            if len(p) != 4:
                raise SystemExit(f"{path}:{ln}: {len(p)} fields, expected 4")
            w.append(int(p[0]))
            q.append(float(p[1]))
            r.append(float(p[2]))
            k.append(float(p[3]))
    if not w:
        raise SystemExit(f"{path}: no tokens")
    return w, q, r, k


def clustered_mean_se(windows, values):
    """Mean over tokens and its standard error with windows as the independent units."""
    sums, counts = {}, {}
    for w, v in zip(windows, values):
        sums[w] = sums.get(w, 0.0) + v
        counts[w] = counts.get(w, 0) + 1
    n = len(values)
    mean = sum(values) / n
    g = len(sums)
    if g < 2:
        return mean, float("nan")
    # Ratio estimator of the mean of a cluster sample: var = g/(g-1) * sum((S_w - mean*n_w)^2) / n^2.
    ss = sum((sums[w] - mean * counts[w]) ** 2 for w in sums)
    return mean, math.sqrt(g / (g - 1) * ss) / n


def summarize(named):
    rows = {}
    for name, path in named:
        w, q, r, k = read_tokens(path)
        d = [a - b for a, b in zip(q, r)]
        dm, dse = clustered_mean_se(w, d)
        km, kse = clustered_mean_se(w, k)
        rows[name] = {"w": w, "d": d, "k": k, "ref": r}
        print(f"{name:28s} tokens {len(d):6d}  ppl change {100 * math.expm1(dm):+7.3f} % (ln ratio se {100 * dse:.3f} %)"
              f"  KL {1e3 * km:8.3f}e-3 +- {1e3 * kse:.3f}")
    return rows


def compare(rows, a, b):
    ra, rb = rows[a], rows[b]
    if ra["w"] != rb["w"] or len(ra["d"]) != len(rb["d"]):
        raise SystemExit(f"{a} and {b} were not scored on the same windows")
    if any(abs(x - y) > 1e-4 for x, y in zip(ra["ref"], rb["ref"])):
        raise SystemExit(f"{a} and {b}: reference NLLs differ (different ids or reference?)")
    dd = [x - y for x, y in zip(ra["d"], rb["d"])]
    dk = [x - y for x, y in zip(ra["k"], rb["k"])]
    m, se = clustered_mean_se(ra["w"], dd)
    km, kse = clustered_mean_se(ra["w"], dk)
    verdict = lambda v, s: "resolved" if abs(v) >= 2 * s else "not resolved"
    print(f"{a} - {b}: ln ppl {100 * m:+.3f} % +- {100 * se:.3f} ({verdict(m, se)}); "
          f"KL {1e3 * km:+.3f}e-3 +- {1e3 * kse:.3f} ({verdict(km, kse)})")


def self_test():
    # clustered SE of a constant-per-window signal equals the SE of the window means
    w = [0, 0, 1, 1, 2, 2]
    v = [1.0, 1.0, 2.0, 2.0, 6.0, 6.0]
    m, se = clustered_mean_se(w, v)
    wm = [1.0, 2.0, 6.0]
    mu = sum(wm) / 3
    want = math.sqrt(sum((x - mu) ** 2 for x in wm) / 2 / 3)
    assert abs(m - 3.0) < 1e-15 and abs(se - want) < 1e-12, (m, se, want)
    # equal values: zero SE
    assert clustered_mean_se([0, 1, 2], [0.5, 0.5, 0.5])[1] == 0.0
    print("paired_compare self-test ok")


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    all_pairs = "--all-pairs" in argv
    args = [x for x in argv if x != "--all-pairs"]
    named = []
    for x in args:
        name, sep, path = x.partition("=")
        if not sep:
            raise SystemExit(__doc__)
        named.append((name, path))
    if len(named) < 2:
        raise SystemExit(__doc__)
    rows = summarize(named)
    names = [n for n, _ in named]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] if all_pairs else \
        [(names[0], b) for b in names[1:]]
    for a, b in pairs:
        compare(rows, a, b)


if __name__ == "__main__":
    main(sys.argv[1:])
