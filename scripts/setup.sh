#!/usr/bin/env bash
# setup.sh: installs what loom needs to build and test, from Debian's packages (and the e2e suite's
# npm packages). Idempotent: installs only what is missing. Called by `make run` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(cmake make gcc clang pkg-config libjansson-dev libpcre2-dev libutf8proc-dev libmicrohttpd-dev
      libclang-rt-14-dev)
# Node.js may come from Debian (nodejs + npm) or from a vendor package that bundles npm: check the commands.
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The e2e suite's npm packages (the official openai client), pinned by package-lock.json.
if [ -f tests/e2e/package.json ] && [ ! -d tests/e2e/node_modules ]; then
    echo "setup: npm install in tests/e2e" >&2
    (cd tests/e2e && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi) >&2
fi
exit 0
