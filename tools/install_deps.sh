#!/usr/bin/env bash
# Installs fp4q's build and test dependencies from Debian packages when any is missing.
# Idempotent: does nothing (and needs no network) when everything is already installed.
set -euo pipefail
pkgs=(g++ make cmake pkg-config libeigen3-dev libopenblas-dev liblapacke-dev nlohmann-json3-dev
      libcli11-dev libspdlog-dev libpcre2-dev libgtest-dev libbenchmark-dev
      python3)   # python3: the self-tests of the analysis tools (tools/paired_compare.py)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "fp4q: installing missing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
