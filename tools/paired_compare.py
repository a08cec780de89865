#!/usr/bin/env python3
"""Token-by-token comparison of quantized models scored on the same ids against the same reference.

Inputs: per-token files written by `fp4q eval ... --kl-reference REF --dump-tokens FILE` or by
`tools/fpquant_shim.py --dump-tokens DIR` (TSV, header "window nll ref_nll kl ent ref_ent", one line
per scored token, same ids and windows in every file; files before the entropy columns have the first
four), or their per-window sums (--to-windows: header "window tokens nll ref_nll kl [ent ref_ent]");
only the per-window sums enter the statistics below.

For each file: the perplexity change against the reference, 100 * (exp(mean(nll - ref_nll)) - 1) %,
and the mean KL; with entropies also dH, the mean entropy change H(P_cell) - H(P_ref) (> 0: the cell's
next-token distributions are flatter than the reference's), and the reference's mean NLL minus its
mean entropy (> 0: the reference is over-confident on this text, so a flatter cell gains perplexity
beyond what its KL says). For each pair (A, B), the paired difference of the per-token values, with a
standard error that treats the evaluation windows, not the tokens, as the independent units
(tokens of one window are correlated; the window means are close to independent): SE =
sd(window means of the difference) / sqrt(windows), the tokens of a window weighted by their count.
A difference is called "resolved" when it is at least 2 standard errors from 0.

  python3 tools/paired_compare.py NAME=FILE NAME=FILE [...]        # every pair against the first
  python3 tools/paired_compare.py --all-pairs NAME=FILE ...
  python3 tools/paired_compare.py --to-windows TOKENS.tsv WINDOWS.tsv   # per-window sums, for storing
  python3 tools/paired_compare.py --pool OUT.tsv FILE FILE [...]      # one cell over several calibrations
  python3 tools/paired_compare.py --entropy-fit DIR [DIR...]  # dnll - KL against the entropy change, all cells
  python3 tools/paired_compare.py --across DIR[,DIR...] ...   # fp4q vs FP-Quant MR-GPTQ per model, combined
  python3 tools/paired_compare.py --table DIR [DIR...]  # every cell of a directory of such files (issue 9);
                                                          # several: pooled over calibration samples
  python3 tools/paired_compare.py --self-test
"""
import math
import sys


TOKEN_HEADS = (["window", "nll", "ref_nll", "kl"], ["window", "nll", "ref_nll", "kl", "ent", "ref_ent"])


def read_tokens(path):
    """Per-window sums of a --dump-tokens file (window nll ref_nll kl [ent ref_ent], one line per
    token) or of a window file written by --to-windows (window tokens nll ref_nll kl [ent ref_ent],
    sums per window). ent, ref_ent: entropies of the cell's and the reference's next-token
    distribution (files written since 2026-12-03's fifth session; older files lack them).
    Returns {window: [tokens, sum nll, sum ref_nll, sum kl(, sum ent, sum ref_ent)]}."""
    out = {}
    with open(path) as f:
        head = f.readline().split()
        if head in TOKEN_HEADS:
            per_token, nv = True, len(head) - 1
        elif head[:1] + head[2:] in TOKEN_HEADS and head[1:2] == ["tokens"]:
            per_token, nv = False, len(head) - 2
        else:
            raise SystemExit(f"{path}: header {head}, expected window [tokens] nll ref_nll kl [ent ref_ent]")
        for ln, line in enumerate(f, 2):
            p = line.split("\t")
            if len(p) != len(head):
                raise SystemExit(f"{path}:{ln}: {len(p)} fields, expected {len(head)}")
            w = int(p[0])
            if per_token:
                n, v = 1, [float(x) for x in p[1:]]
            else:
                n, v = int(p[1]), [float(x) for x in p[2:]]
            acc = out.setdefault(w, [0] + [0.0] * nv)
            acc[0] += n
            for i in range(nv):
                acc[i + 1] += v[i]
    if not out:
        raise SystemExit(f"{path}: no tokens")
    return out


def to_windows(src, dst, ws=None):
    """Writes the per-window sums of a --dump-tokens file (a few KB instead of MB)."""
    ws = read_tokens(src) if ws is None else ws
    with open(dst, "w") as f:
        nv = len(next(iter(ws.values()))) - 1
        f.write("window\ttokens\t" + "\t".join(TOKEN_HEADS[nv == 5][1:]) + "\n")
        for w in sorted(ws):
            f.write(f"{w}\t{ws[w][0]}\t" + "\t".join(repr(x) for x in ws[w][1:]) + "\n")


def pool(dst, srcs):
    """Per-window sums over several files of the same windows (e.g. one cell quantized from
    different calibration samples, scored on the same ids): the pooled file's mean is the average
    over the files, and its clustered standard error still treats the windows as the independent
    units, so the correlation between files scored on the same text is accounted for."""
    first, tot = None, None
    for src in srcs:
        ws = read_tokens(src)
        if first is None:
            first, tot = ws, {w: list(v) for w, v in ws.items()}
            continue
        if sorted(ws) != sorted(first) or any(len(ws[w]) != len(first[w]) or ws[w][0] != first[w][0] for w in ws):
            raise SystemExit(f"{src}: not the same windows, token counts and columns as {srcs[0]}")
        for w, v in ws.items():
            tot[w] = [a + b for a, b in zip(tot[w], v)]
    to_windows(None, dst, tot)


def clustered_mean_se(sums, counts):
    """Mean over tokens (sum of sums / sum of counts) and its standard error with the windows as
    the independent units: the ratio estimator of a cluster sample,
    var = g/(g-1) * sum_w (S_w - mean*n_w)^2 / n^2."""
    n = sum(counts)
    mean = sum(sums) / n
    g = len(sums)
    if g < 2:
        return mean, float("nan")
    ss = sum((s_ - mean * c) ** 2 for s_, c in zip(sums, counts))
    return mean, math.sqrt(g / (g - 1) * ss) / n


def cell_rows(ws):
    """Per-window vectors of one cell (windows in ascending order): token counts, NLL differences
    to the reference, KL, the reference's NLL and, with entropies, the entropy change and the
    reference's NLL minus its entropy."""
    keys = sorted(ws)
    rows = {"keys": keys, "cnt": [ws[w][0] for w in keys], "d": [ws[w][1] - ws[w][2] for w in keys],
            "k": [ws[w][3] for w in keys], "ref": [ws[w][2] for w in keys]}
    if all(len(ws[w]) == 6 for w in keys):  # entropy change H(P_cell) - H(P_ref); > 0: flatter
        rows["h"] = [ws[w][4] - ws[w][5] for w in keys]
        rows["cal"] = [ws[w][2] - ws[w][5] for w in keys]
    return rows


def summarize(named):
    rows = {}
    for name, path in named:
        r = rows[name] = cell_rows(read_tokens(path))
        cnt = r["cnt"]
        dm, dse = clustered_mean_se(r["d"], cnt)
        km, kse = clustered_mean_se(r["k"], cnt)
        ent = ""
        if "h" in r:
            hm, hse = clustered_mean_se(r["h"], cnt)
            cal, _ = clustered_mean_se(r["cal"], cnt)
            ent = f"  dH {1e3 * hm:+8.3f}e-3 +- {1e3 * hse:.3f} (ref nll - ref H {cal:+.4f})"
        print(f"{name:28s} tokens {sum(cnt):6d}  ppl change {100 * math.expm1(dm):+7.3f} % (ln ratio se {100 * dse:.3f} %)"
              f"  KL {1e3 * km:8.3f}e-3 +- {1e3 * kse:.3f}{ent}")
    return rows


def paired_diff(ra, rb, a, b):
    """Paired differences A - B of two cells' rows (cell_rows()) as (mean, se) pairs: ln perplexity,
    KL and, where both have entropies, the entropy change (else None)."""
    if ra["keys"] != rb["keys"] or ra["cnt"] != rb["cnt"]:
        raise SystemExit(f"{a} and {b} were not scored on the same windows")
    if any(abs(x - y) > 1e-3 * max(1.0, abs(x)) for x, y in zip(ra["ref"], rb["ref"])):
        raise SystemExit(f"{a} and {b}: reference NLLs differ (different ids or reference?)")
    diff = lambda key: clustered_mean_se([x - y for x, y in zip(ra[key], rb[key])], ra["cnt"])
    return diff("d"), diff("k"), diff("h") if "h" in ra and "h" in rb else None


def compare(rows, a, b):
    (m, se), (km, kse), h = paired_diff(rows[a], rows[b], a, b)
    verdict = lambda v, s_: "resolved" if abs(v) >= 2 * s_ else "not resolved"
    ent = ""
    if h:
        hm, hse = h
        ent = f"; dH {1e3 * hm:+.3f}e-3 +- {1e3 * hse:.3f} ({verdict(hm, hse)})"
    print(f"{a} - {b}: ln ppl {100 * m:+.3f} % +- {100 * se:.3f} ({verdict(m, se)}); "
          f"KL {1e3 * km:+.3f}e-3 +- {1e3 * kse:.3f} ({verdict(km, kse)}){ent}")


def self_test():
    import os
    import tempfile
    # clustered SE of a constant-per-window signal equals the SE of the window means
    m, se = clustered_mean_se([2.0, 4.0, 12.0], [2, 2, 2])
    wm = [1.0, 2.0, 6.0]
    mu = sum(wm) / 3
    want = math.sqrt(sum((x - mu) ** 2 for x in wm) / 2 / 3)
    assert abs(m - 3.0) < 1e-15 and abs(se - want) < 1e-12, (m, se, want)
    assert clustered_mean_se([0.5, 0.5, 0.5], [1, 1, 1])[1] == 0.0
    # a per-token file and its --to-windows file give the same per-window sums
    d = tempfile.mkdtemp()
    tok, win = os.path.join(d, "t.tsv"), os.path.join(d, "w.tsv")
    with open(tok, "w") as f:
        f.write("window\tnll\tref_nll\tkl\n0\t1.5\t1.0\t0.25\n0\t2.0\t2.5\t0.5\n1\t3.0\t1.0\t1.0\n")
    to_windows(tok, win)
    a, b = read_tokens(tok), read_tokens(win)
    assert a == b == {0: [2, 3.5, 3.5, 0.75], 1: [1, 3.0, 1.0, 1.0]}, (a, b)
    with open(tok, "w") as f:  # with the entropy columns
        f.write("window\tnll\tref_nll\tkl\tent\tref_ent\n0\t1.5\t1.0\t0.25\t2.0\t1.75\n"
                "0\t2.0\t2.5\t0.5\t1.0\t0.5\n1\t3.0\t1.0\t1.0\t4.0\t3.0\n")
    to_windows(tok, win)
    a, b = read_tokens(tok), read_tokens(win)
    assert a == b == {0: [2, 3.5, 3.5, 0.75, 3.0, 2.25], 1: [1, 3.0, 1.0, 1.0, 4.0, 3.0]}, (a, b)
    assert open(win).readline().split() == ["window", "tokens", "nll", "ref_nll", "kl", "ent", "ref_ent"]
    # pooling a file with itself doubles every sum; the mean and its standard error stay
    pooled = os.path.join(d, "p.tsv")
    pool(pooled, [tok, win])
    assert read_tokens(pooled) == {0: [4, 7.0, 7.0, 1.5, 6.0, 4.5], 1: [2, 6.0, 2.0, 2.0, 8.0, 6.0]}
    try:
        with open(os.path.join(d, "w1.tsv"), "w") as f:  # window 1 missing
            f.write("window\ttokens\tnll\tref_nll\tkl\tent\tref_ent\n0\t2\t3.5\t3.5\t0.75\t3.0\t2.25\n")
        pool(pooled, [tok, os.path.join(d, "w1.tsv")])
    except SystemExit:
        pass
    else:
        raise AssertionError("pool accepted a file with other windows")
    # entropy_fit recovers an exact line dnll - KL = 0.01 - 0.5 dH from three one-window cells
    fd = tempfile.mkdtemp()
    for i, dh in enumerate((0.0, 0.1, 0.3)):
        kl = 0.05 * (i + 1)
        dn = kl + 0.01 - 0.5 * dh
        with open(os.path.join(fd, f"c{i}-indomain-fp32.tsv"), "w") as f:
            f.write(f"window\tnll\tref_nll\tkl\tent\tref_ent\n0\t{2.0 + dn!r}\t2.0\t{kl!r}\t{1.5 + dh!r}\t1.5\n")
    a, b, r2 = entropy_fit([fd])
    assert abs(a - 0.01) < 1e-9 and abs(b + 0.5) < 1e-9 and abs(r2 - 1) < 1e-9, (a, b, r2)
    # combine(): equal errors give the plain mean and se/sqrt(k); Q = sum((v - mean)^2) / se^2;
    # tau^2 = (Q - df) / (S1 - S2/S1) with S1 = k/se^2, S2 = k/se^4
    m, se_, q, tau2, rm, rse = combine([1.0, 2.0, 6.0], [1.0, 1.0, 1.0])
    assert abs(m - 3.0) < 1e-12 and abs(se_ - 1 / math.sqrt(3)) < 1e-12 and abs(q - 14.0) < 1e-12
    assert abs(tau2 - 6.0) < 1e-12 and abs(rm - 3.0) < 1e-12 and abs(rse - math.sqrt(7.0 / 3)) < 1e-12
    m, se_, q, tau2, rm, rse = combine([1.0, 1.5], [1.0, 2.0])   # Q below df: no between-estimate spread
    assert abs(m - 1.1) < 1e-12 and abs(q - 0.05) < 1e-12 and tau2 == 0.0 and rm == m and rse == se_
    print("paired_compare self-test ok")


def pooled_dir(dirs, quiet=False):
    """A temporary directory holding every cell file of dirs[0], pooled (pool()) over those of
    `dirs` that hold a file of the same name."""
    import glob
    import os
    import tempfile
    tmp = tempfile.mkdtemp()
    names = sorted(os.path.basename(p_) for p_ in glob.glob(os.path.join(dirs[0], "*-fp32.tsv")))
    by = {}
    for n in names:  # every file of the first directory, pooled over the directories that have it
        have = [os.path.join(x, n) for x in dirs if os.path.exists(os.path.join(x, n))]
        pool(os.path.join(tmp, n), have)
        by.setdefault(len(have), []).append(n[:-len("-indomain-fp32.tsv")])
    if not quiet:
        for k in sorted(by, reverse=True):
            print(f"in {k} of {len(dirs)} directories: {', '.join(by[k])}")
    return tmp


def paired(pa, pb):
    """Paired difference A - B of two cell files: (ln ppl, se, KL, se)."""
    (m, se), (km, kse), _ = paired_diff(cell_rows(read_tokens(pa)), cell_rows(read_tokens(pb)), pa, pb)
    return m, se, km, kse


def combine(vals, ses):
    """Independent estimates with standard errors: the inverse-variance weighted mean and its SE,
    Cochran's Q, the DerSimonian-Laird between-estimate variance tau^2 = max(0, (Q - df) / (S1 -
    S2 / S1)) (S1, S2: sums of the weights and of their squares) and the random-effects mean and SE
    with weights 1 / (se^2 + tau^2)."""
    w = [1 / x ** 2 for x in ses]
    mean = sum(wi * v for wi, v in zip(w, vals)) / sum(w)
    q = sum(wi * (v - mean) ** 2 for wi, v in zip(w, vals))
    tau2 = max(0.0, (q - (len(vals) - 1)) / (sum(w) - sum(x * x for x in w) / sum(w)))
    wr = [1 / (x ** 2 + tau2) for x in ses]
    rmean = sum(wi * v for wi, v in zip(wr, vals)) / sum(wr)
    return mean, 1 / math.sqrt(sum(w)), q, tau2, rmean, 1 / math.sqrt(sum(wr))


def across(specs):
    """fp4q MR-GPTQ minus FP-Quant MR-GPTQ (fix, bf16) per cell on several models, and their
    inverse-variance weighted mean over the models (models are independent), with Cochran's Q:
    the spread of the per-model differences against their standard errors (Q well above the
    number of models minus one: the difference depends on the model). Each spec is one model:
    a windows directory, or several separated by commas (pooled over calibration samples)."""
    import os
    dirs = [spec.split(",") for spec in specs]
    dirs = [ds[0] if len(ds) == 1 else pooled_dir(ds, quiet=True) for ds in dirs]
    for cell in ("nvfp4-w4a16", "nvfp4-w4a4", "mxfp4-w4a16", "mxfp4-w4a4"):
        for v in ("fix", "bf16"):
            rows = []
            for spec, d in zip(specs, dirs):
                a = os.path.join(d, f"fp4q-{cell}-mrgptq-indomain-fp32.tsv")
                b = os.path.join(d, f"fpq-{cell}-mrgptq-{v}-indomain-fp32.tsv")
                if os.path.exists(a) and os.path.exists(b):
                    rows.append((spec, *paired(a, b)))
            if not rows:
                continue
            print(f"== {cell}, fp4q MR-GPTQ - FP-Quant MR-GPTQ {v} (ln ppl in %, KL in 1e-3 nats)")
            for spec, m, se, km, kse in rows:
                print(f"  {spec}: {100 * m:+.3f} +- {100 * se:.3f}; KL {1e3 * km:+.3f} +- {1e3 * kse:.3f}")
            if len(rows) > 1:
                mean, se, q, tau2, rmean, rse = combine([r[1] for r in rows], [r[2] for r in rows])
                kmean, kse = combine([r[3] for r in rows], [r[4] for r in rows])[:2]
                print(f"  over {len(rows)} models: {100 * mean:+.3f} +- {100 * se:.3f} "
                      f"(Cochran's Q {q:.1f} on {len(rows) - 1} degrees of freedom; with the between-model spread "
                      f"{100 * math.sqrt(tau2):.3f}: {100 * rmean:+.3f} +- {100 * rse:.3f}); "
                      f"KL {1e3 * kmean:+.3f} +- {1e3 * kse:.3f}")


def compare_if_same(rows, a, b):
    """compare(), or a note where the two cells were pooled over different numbers of samples."""
    if rows[a]["cnt"] != rows[b]["cnt"]:
        print(f"{a} - {b}: not compared (pooled over different calibration samples)")
    else:
        compare(rows, a, b)


def table(d, *more):
    """The issue-9 comparisons for every cell found in a windows directory (files
    fp4q-<cell>-<method>-<text>-fp32.tsv and fpq-<cell>-<method>-{fix,bf16,fused-fix}-<text>-fp32.tsv):
    fp4q MR-GPTQ against FP-Quant MR-GPTQ (fix, bf16, fused-fix), and fp4q MR-GPTQ / GPTQ / RTN
    pairwise. With several directories (the same cells quantized from other calibration samples,
    scored on the same ids), each cell is first pooled over the directories that hold it (pool();
    the first lines say which cells were pooled over how many)."""
    import glob
    import os
    if more:
        d = pooled_dir((d,) + more)
    for cell in ("nvfp4-w4a16", "nvfp4-w4a4", "mxfp4-w4a16", "mxfp4-w4a4"):
        def f(prefix, method):
            g = sorted(glob.glob(os.path.join(d, f"{prefix}-{cell}-{method}-indomain-fp32.tsv")))
            return g[0] if g else None
        print(f"== {cell}")
        named = [(n, p_) for n, p_ in (("fp4q-mrgptq", f("fp4q", "mrgptq")), ("fpq-mrgptq-fix", f("fpq", "mrgptq-fix")),
                                       ("fpq-mrgptq-bf16", f("fpq", "mrgptq-bf16")),
                                       ("fpq-mrgptq-fused-fix", f("fpq", "mrgptq-fused-fix"))) if p_]
        rows = {}
        if len(named) >= 2:
            rows = summarize(named)
            for b, _ in named[1:]:
                compare_if_same(rows, named[0][0], b)
        own = [(n, p_) for n, p_ in (("fp4q-mrgptq", f("fp4q", "mrgptq")), ("fp4q-gptq", f("fp4q", "gptq")),
                                     ("fp4q-rtn", f("fp4q", "rtn"))) if p_]
        if len(own) == 3:
            rows.update(summarize([x for x in own if x[0] not in rows]))
            compare_if_same(rows, "fp4q-mrgptq", "fp4q-gptq")
            compare_if_same(rows, "fp4q-gptq", "fp4q-rtn")


def entropy_fit(dirs):
    """Across every cell file with entropy columns in the given directories: the part of a cell's
    log-perplexity change that its KL does not account for, dnll - KL (zero in expectation if the
    text were drawn from the reference model), against its entropy change dH, with the
    least-squares line dnll - KL = a + b dH and its R^2. For an over-confident reference (mean NLL
    above mean entropy) flatter cells (dH > 0) gain perplexity beyond their KL: b < 0."""
    import glob
    import os
    pts = []
    for d in dirs:
        for p_ in sorted(glob.glob(os.path.join(d, "*-fp32.tsv"))):
            ws = read_tokens(p_)
            if "unquantized" in p_ or any(len(v) != 6 for v in ws.values()):
                continue
            n = sum(v[0] for v in ws.values())
            dn, kl = sum(v[1] - v[2] for v in ws.values()) / n, sum(v[3] for v in ws.values()) / n
            dh, cal = sum(v[4] - v[5] for v in ws.values()) / n, sum(v[2] - v[5] for v in ws.values()) / n
            pts.append((f"{os.path.basename(os.path.normpath(d))}/{os.path.basename(p_)[:-len('-indomain-fp32.tsv')]}",
                        dn, kl, dh, cal))
    if len(pts) < 3:
        raise SystemExit("entropy fit: fewer than 3 cells with entropy columns")
    x = [p_[3] for p_ in pts]
    y = [p_[1] - p_[2] for p_ in pts]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    b = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sum((u - mx) ** 2 for u in x)
    a = my - b * mx
    r2 = 1 - sum((v - a - b * u) ** 2 for u, v in zip(x, y)) / sum((v - my) ** 2 for v in y)
    print(f"{'cell':58s} {'dnll':>7s} {'KL':>7s} {'dH':>7s} {'dnll-KL':>8s} {'fit':>7s} (1e-3 nats; ref nll - ref H)")
    for (name, dn, kl, dh, cal), v in zip(pts, y):
        print(f"{name:58s} {1e3 * dn:7.2f} {1e3 * kl:7.2f} {1e3 * dh:+7.2f} {1e3 * v:+8.2f} {1e3 * (a + b * dh):+7.2f} ({cal:+.4f})")
    print(f"fit over {len(pts)} cells: dnll - KL = {1e3 * a:+.2f}e-3 {b:+.4f} * dH, R^2 {r2:.3f}")
    return a, b, r2


def main(argv):
    if len(argv) >= 2 and argv[0] == "--table":
        return table(*argv[1:])
    if argv == ["--self-test"]:
        return self_test()
    if len(argv) == 3 and argv[0] == "--to-windows":
        return to_windows(argv[1], argv[2])
    if len(argv) >= 2 and argv[0] == "--across":
        return across(argv[1:])
    if len(argv) >= 2 and argv[0] == "--entropy-fit":
        return entropy_fit(argv[1:])
    if len(argv) >= 4 and argv[0] == "--pool":
        return pool(argv[1], argv[2:])
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
