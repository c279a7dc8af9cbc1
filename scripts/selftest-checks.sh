#!/usr/bin/env bash
# Proves that the checks scripts/test runs after the suites can fail: each is
# fed known-bad input and must reject it (and known-good input, which it must
# accept, so a rejection is for the reason intended):
#   * scripts/scan-logs-for-secrets.sh: a leaked secret, an unreadable log;
#   * scripts/validate_responses.py: non-conforming exchanges, a function
#     answering 404 on its own route, a documented response never exercised;
#   * the schemathesis failure filter: a wrong answer to a genuine replay.
#
#   scripts/selftest-checks.sh        (needs .venv: scripts/setup-test-env.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=.venv/bin/python
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
passed=0

# expect <what> <wanted exit status> <text the output must contain, or ""> -- <command...>
expect() {
    local what="$1" wanted="$2" needle="$3"
    shift 4
    local status=0 output
    output="$("$@" 2>&1)" || status=$?
    if [[ $status -ne $wanted ]]; then
        echo "selftest FAIL: $what: exit $status, wanted $wanted; output:" >&2
        echo "$output" | sed 's/^/    /' >&2
        failed=$((failed + 1))
    elif [[ -n "$needle" && "$output" != *"$needle"* ]]; then
        echo "selftest FAIL: $what: output lacks \"$needle\"; output:" >&2
        echo "$output" | sed 's/^/    /' >&2
        failed=$((failed + 1))
    else
        passed=$((passed + 1))
    fi
}

# --- the log scan ---------------------------------------------------------------
logs="$work/logs"
mkdir -p "$logs"
printf 'adm_selftest_secret_1234\n{"admin_secret":"adm_selftest_secret_1234"}\n' > "$logs/suite.secrets"
printf '{"level":"INFO","message":"request","http.status":200}\n' > "$logs/suite.log"
expect "scan: clean logs pass" 0 "no leak" -- scripts/scan-logs-for-secrets.sh "$logs"
printf '{"level":"ERROR","message":"bad bearer adm_selftest_secret_1234"}\n' > "$logs/other.log"
expect "scan: a leaked secret fails" 1 "other.log" -- scripts/scan-logs-for-secrets.sh "$logs"
rm "$logs/other.log"
mkdir "$logs/unreadable.log"
expect "scan: a grep error fails, never 'no leak'" 2 "scan failed" -- scripts/scan-logs-for-secrets.sh "$logs"
rmdir "$logs/unreadable.log"
: > "$logs/suite.secrets"
expect "scan: no secrets to look for fails" 1 "empty" -- scripts/scan-logs-for-secrets.sh "$logs"
expect "scan: nothing recorded fails" 1 "no function logs" -- scripts/scan-logs-for-secrets.sh "$work/nowhere"

# --- the OpenAPI validator (its cases: scripts/selftest_validate_responses.py) ----
expect "validator: known-bad exchanges and missing coverage fail, known-good ones pass" 0 \
    "validator selftest passed" -- "$python" scripts/selftest_validate_responses.py docs/openapi.yaml

# --- the schemathesis failure filter ----------------------------------------------
expect "schemathesis hooks: a wrong answer to a genuine replay is kept as a failure" 0 "hooks selftest passed" -- \
    "$python" scripts/schemathesis_hooks.py --selftest

if (( failed > 0 )); then
    echo "selftest-checks: $failed of $((failed + passed)) self-tests FAILED" >&2
    exit 1
fi
echo "selftest-checks: $passed self-tests passed: every check rejects its known-bad input"
