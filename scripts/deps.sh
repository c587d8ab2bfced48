#!/bin/sh
# Installs the Debian packages llmux needs to build and test, when missing.
# As root it runs apt-get; otherwise it prints the command to run.
#   libuv1-dev          event loop, TCP, timers, threads
#   libhttp-parser-dev  HTTP/1.1 parsing (requests and responses, chunked)
#   libjansson-dev      JSON for config, admin API, /health
#   libcmocka-dev       unit tests
#   pkg-config make gcc build
#   python3-pytest python3-httpx   end-to-end tests (run by /usr/bin/python3)
#   curl                the README's examples and `make run`
#   prometheus          promtool and a real Prometheus for the deploy/ tests
#   python3-yaml        the deploy/ manifest tests
#   chromium            the /status page test (headless)
# tests/e2e/test_api.py installs nodejs and npm itself when `node` is missing
# (not listed here: a machine may have another Node.js, whose npm Debian's
# would conflict with), then the openai npm package under build/npm.
# `scripts/deps.sh fuzz` adds what `make fuzz` needs:
#   clang libclang-rt-14-dev   libFuzzer with ASan/UBSan
set -e
PKGS="libuv1-dev libhttp-parser-dev libjansson-dev libcmocka-dev pkg-config make gcc python3-pytest python3-httpx curl prometheus python3-yaml chromium"
[ "$1" = fuzz ] && PKGS="$PKGS clang libclang-rt-14-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "llmux needs these Debian packages:$missing" >&2
    echo "install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq $missing
