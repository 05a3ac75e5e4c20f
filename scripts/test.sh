#!/usr/bin/env bash
# The whole test suite: installs what it needs, runs `bun test`, and ends with the one summary line
# CI reads: `N passed, N failed, N skipped`. Extra arguments go to `bun test` (a path filter, -t NAME).
set -uo pipefail
cd "$(dirname "$0")/.."

# System packages some suites use (qemu for the arm64 executable, nftables for the chaos suite's
# partitions and packet loss). Installed when we are root and
# they are missing; otherwise those tests skip and say why.
need=()
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || need+=(libc6-arm64-cross)
command -v nft >/dev/null 2>&1 || need+=(nftables)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need[*]}" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null 2>&1 \
    || echo "warning: could not install ${need[*]}; the tests that need them will skip" >&2
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
sh scripts/bun.sh test --timeout 60000 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
count() { grep -Eo "^ *[0-9]+ $1\$" "$log" | grep -Eo '[0-9]+' | tail -1; }
passed=$(count pass); failed=$(count fail); skipped=$(count skip)
echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
exit "$rc"
