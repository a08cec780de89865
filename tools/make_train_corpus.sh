#!/usr/bin/env bash
# Builds the training corpus of the evaluation model (tools/train_eval_model.py) from texts we may
# use: public-domain / freely licensed texts shipped by Debian packages plus tinyshakespeare from
# shared/data. The evaluation texts (WikiText-2 test, Frankenstein) are NEVER included.
#   tools/make_train_corpus.sh [OUT_DIR]     default .device/train-corpus (git-ignored)
# Writes OUT_DIR/*.txt (UTF-8) and OUT_DIR/SOURCE.txt (package, version, license, sha256, bytes of
# each file). Total size is capped at 25 MiB (MAX_BYTES) by sampling GCIDE entries. Deterministic:
# the same package versions give byte-identical files. Installs the packages with apt-get when
# missing (root).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/.device/train-corpus}"
max_bytes="${MAX_BYTES:-26214400}"
shakespeare="${SHAKESPEARE:-/work/shared/data/tinyshakespeare/input.txt}"
pkgs="bible-kjv bible-kjv-text dict-devil dict-jargon dict-gcide"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
mkdir -p "$out"
rm -f "$out"/*.txt

# dictd databases: the .dict.dz is dictzip (gzip-compatible). Strip dictfmt's 00-database-*
# header entries; keep entries separated by blank lines; output UTF-8 (cp1252 entries converted).
dict_text() {  # $1 = database name, $2 = keep every K-th entry (1 = all)
  zcat "/usr/share/dictd/$1.dict.dz" | python3 -c '
import sys
k = int(sys.argv[1])
def dec(b):  # a few GCIDE entries are cp1252, not UTF-8
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("cp1252", errors="replace")
entries = [dec(e).strip("\n") for e in sys.stdin.buffer.read().split(b"\n\n")]
entries = [e for e in entries if e.strip() and not e.lstrip().startswith("00-database") and not e.startswith("http")]
sys.stdout.buffer.write(("\n\n".join(e for i, e in enumerate(entries) if i % k == 0) + "\n").encode("utf-8"))
' "$2"
}

cp "$shakespeare" "$out/tinyshakespeare.txt"
bible -l0 "gen1:1-rev22:21" > "$out/kjv.txt"
dict_text devil 1 > "$out/devil.txt"
dict_text jargon 1 > "$out/jargon.txt"
used=$(cat "$out"/*.txt | wc -c)
room=$(( max_bytes - used ))
full=$(zcat /usr/share/dictd/gcide.dict.dz | wc -c)
k=$(( (full + room - 1) / room ))
[ "$k" -ge 1 ] || k=1
dict_text gcide "$k" > "$out/gcide.txt"
# hard cap (the estimate above is close; cut at an entry boundary if it overshoots)
total=$(cat "$out"/*.txt | wc -c)
if [ "$total" -gt "$max_bytes" ]; then
  python3 - "$out/gcide.txt" $(( max_bytes - total + $(wc -c < "$out/gcide.txt") )) <<'PY'
import sys
p, n = sys.argv[1], int(sys.argv[2])
t = open(p, encoding="utf-8", errors="strict").read()
b = t.encode()[:n].decode("utf-8", "ignore")
open(p, "w").write(b[: b.rfind("\n\n") + 1])
PY
fi

ver() { dpkg-query -W -f='${Version}' "$1"; }
{
  echo "Training corpus of tools/train_eval_model.py, built by tools/make_train_corpus.sh."
  echo "Held out (never in this corpus): WikiText-2 test (data/text/wikitext2-test.txt) and"
  echo "Frankenstein (data/text/calib-frankenstein.txt), the evaluation texts."
  echo
  printf '%-22s %-10s %-64s %s\n' file bytes sha256 source
  for f in tinyshakespeare kjv devil jargon gcide; do
    printf '%-22s %-10s %-64s ' "$f.txt" "$(wc -c < "$out/$f.txt")" "$(sha256sum "$out/$f.txt" | cut -d' ' -f1)"
    case $f in
      tinyshakespeare) echo "shared/data/tinyshakespeare/input.txt (Shakespeare, public domain; see its SOURCE.txt)";;
      kjv) echo "Debian bible-kjv-text $(ver bible-kjv-text), printed by bible-kjv $(ver bible-kjv) 'bible -l0 gen1:1-rev22:21'; King James Version text: public domain (package: GPL-2)";;
      devil) echo "Debian dict-devil $(ver dict-devil): Ambrose Bierce, The Devil's Dictionary; public domain";;
      jargon) echo "Debian dict-jargon $(ver dict-jargon): The Jargon File; public domain";;
      gcide) echo "Debian dict-gcide $(ver dict-gcide): GNU Collaborative International Dictionary of English (1913 Webster + additions), every entry i with i % ${k} == 0; GPL-2+";;
    esac
  done
  echo
  echo "total bytes: $(cat "$out"/*.txt | wc -c) (cap $max_bytes)"
} > "$out/SOURCE.txt"
cat "$out/SOURCE.txt"
