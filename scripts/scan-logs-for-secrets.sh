#!/usr/bin/env bash
# After the test suite: no line any function process wrote may contain a
# secret any test stack used (admin tokens, RevenueCat keys, the secret JSON).
# The harness writes both lists to target/function-logs/.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/function-logs"

shopt -s nullglob
logs=("$dir"/*.log)
secrets=("$dir"/*.secrets)
if (( ${#logs[@]} == 0 || ${#secrets[@]} == 0 )); then
    echo "scan-logs-for-secrets: no function logs or secrets recorded in $dir" >&2
    exit 1
fi
# Every stack's secrets are checked against every log, whichever test wrote it.
patterns="$(mktemp)"
trap 'rm -f "$patterns"' EXIT
sort -u "${secrets[@]}" > "$patterns"
lines=$(cat "${logs[@]}" | wc -l)
if grep -F -n -f "$patterns" "${logs[@]}" > /dev/null; then
    echo "scan-logs-for-secrets: a function log line contains a secret:" >&2
    grep -F -l -f "$patterns" "${logs[@]}" >&2
    exit 1
fi
echo "scan-logs-for-secrets: $lines log lines, $(wc -l < "$patterns") secrets, no leak"
