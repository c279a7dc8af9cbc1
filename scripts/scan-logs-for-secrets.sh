#!/usr/bin/env bash
# After the test suite: no line any function process wrote, and no line the
# code under test logged in-process, may contain a secret any test stack used
# (admin tokens, RevenueCat keys, the secret JSON, broken secret values).
# The harness writes both lists to target/function-logs/:
#   <test binary>.log      every log line
#   <test binary>.secrets  every secret that test binary used, one per line
#
#   scripts/scan-logs-for-secrets.sh [DIR]     (DIR defaults to target/function-logs)
#
# Exit status: 0 no leak; 1 a leak, or nothing to scan; 2 the scan itself
# failed (an unreadable log, say): never read as "no leak".
set -euo pipefail
dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/function-logs}"

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
sort -u "${secrets[@]}" | { grep -v '^$' || true; } > "$patterns"
if [[ ! -s "$patterns" ]]; then
    echo "scan-logs-for-secrets: the secret lists in $dir are empty" >&2
    exit 1
fi
# grep: 0 = a match (a leak), 1 = no match, anything else = grep failed.
status=0
leaks="$(grep -F -l -f "$patterns" -- "${logs[@]}")" || status=$?
case $status in
    0)
        echo "scan-logs-for-secrets: a log line contains a secret, in:" >&2
        echo "$leaks" >&2
        exit 1
        ;;
    1) ;;
    *)
        echo "scan-logs-for-secrets: the scan failed (grep exit $status); not reporting 'no leak'" >&2
        exit 2
        ;;
esac
if ! lines=$(cat -- "${logs[@]}" | wc -l); then
    echo "scan-logs-for-secrets: the logs in $dir could not be read" >&2
    exit 2
fi
if (( lines == 0 )); then
    echo "scan-logs-for-secrets: the logs in $dir are empty" >&2
    exit 1
fi
echo "scan-logs-for-secrets: $lines log lines, $(wc -l < "$patterns") secrets, no leak"
