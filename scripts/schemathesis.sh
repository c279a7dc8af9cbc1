#!/usr/bin/env bash
# Contract test of the running API against docs/openapi.yaml, with schemathesis:
#   scripts/schemathesis.sh
#
# Builds and starts the local runner (target/debug/credits-local: the real
# router, pipeline and handlers, with the embedded RevenueCat sandbox, the
# in-memory store and no gateway) on a free loopback port, runs schemathesis
# against it with every check, and always stops the server again. Exits
# non-zero on any failure: a failed check, an error, a server that does not
# start or dies, or a panic in the server's log.
#
# Nothing leaves this machine: the server binds 127.0.0.1, its RevenueCat is
# the embedded sandbox (also on loopback), and schemathesis talks only to the
# URL the server prints, with proxies bypassed.
#
# Deterministic: a fixed seed, one worker, a fresh server (fresh in-memory
# state) per run, and no example database or crash cache carried between runs
# (schemathesis runs in a temporary directory that is removed afterwards).
#
# Environment (all optional):
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default 200)
#   SCHEMATHESIS_SEED          the seed (default 20261125)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root="$(pwd)"

max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-200}"
seed="${SCHEMATHESIS_SEED:-20261125}"
admin_token="adm_schemathesis_local"

venv="$repo_root/.venv"
out_dir="$repo_root/target/schemathesis"
server_log="$out_dir/credits-local.log"

say() { printf 'schemathesis.sh: %s\n' "$*"; }

# --- (a) schemathesis, pinned in scripts/requirements-test.txt, in <repo>/.venv ---
"$repo_root/scripts/setup-test-env.sh" > /dev/null

# --- (b) build and start the local runner ----------------------------------------
cargo build --locked -p credits-local
mkdir -p "$out_dir"
work="$(mktemp -d)"
server_pid=""

stop_server() {
    if [[ -n "$server_pid" ]]; then
        if kill -0 "$server_pid" 2>/dev/null; then
            kill -TERM "$server_pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$server_pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$server_pid" 2>/dev/null || true
        fi
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
cleanup() {
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Only the embedded adapters, whatever the caller's environment holds (no real
# RevenueCat, DynamoDB, Secrets Manager or gateway). The rate limits (60/120/30
# per minute) would turn most of the run into 429s, so they are lifted: the 429
# answer itself is covered by the Rust tests.
env -u REVENUECAT_API_KEY -u REVENUECAT_PROJECT_ID -u REVENUECAT_API_URL -u TABLE_NAME \
    -u GATEWAY_URL -u ADMIN_SECRET_ID -u AWS_LAMBDA_RUNTIME_API -u AWS_ENDPOINT_URL \
    PORT=0 ADMIN_TOKEN="$admin_token" RATE_LIMIT_PER_MINUTE=1000000 AWS_LAMBDA_LOG_FORMAT=Text \
    "$repo_root/target/debug/credits-local" >"$server_log" 2>&1 &
server_pid=$!

url=""
for _ in $(seq 300); do
    url="$(sed -n 's/^.*listening on \(http:\/\/127\.0\.0\.1:[0-9][0-9]*\).*$/\1/p' "$server_log" | head -n 1)"
    [[ -n "$url" ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$url" ]]; then
    say "credits-local did not start within 30 s; its output:" >&2
    cat "$server_log" >&2
    exit 1
fi
say "credits-local is listening on $url (log: ${server_log#"$repo_root/"})"

# --- (c) schemathesis ------------------------------------------------------------
# Hooks (scripts/schemathesis_hooks.py): `map_case` keeps idempotency keys from
# colliding across different generated adjustments, `after_call` remembers
# which adjustment each key was bound to, and `filter_failure` drops, by exact
# match, only failures that are this API's documented behaviour (a key reused
# for a different adjustment, an integral float amount, a grant RevenueCat
# refuses because the balance would pass its cap, ...). Every other failure
# fails the run. Drops are counted at the end.
# Every built-in check (`--checks all`): not_a_server_error,
# status_code_conformance, content_type_conformance,
# response_headers_conformance, response_schema_conformance,
# negative_data_rejection, positive_data_acceptance (narrowed on the
# adjustment by the hooks), missing_required_header, ignored_auth,
# unsupported_method, allow_header_conformance. use_after_free,
# ensure_resource_availability and object_level_authorization have nothing to
# act on here (no links, no DELETE, one caller) and pass vacuously.
status=0
(
    cd "$work"
    env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy \
        NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost \
        SCHEMATHESIS_HOOKS="$repo_root/scripts/schemathesis_hooks.py" CREDITS_ADMIN_TOKEN="$admin_token" \
        "$venv/bin/schemathesis" run "$repo_root/docs/openapi.yaml" \
        --url "$url" \
        -H "Authorization: Bearer $admin_token" \
        --checks all \
        --max-examples "$max_examples" \
        --seed "$seed" \
        --workers 1 \
        --generation-database none \
        --request-timeout 10 \
        --continue-on-failure \
        --output-sanitize false \
        --no-color
) || status=$?

# --- (d) stop the server; it must have stayed up and never panicked ---------------
if ! kill -0 "$server_pid" 2>/dev/null; then
    say "credits-local exited during the run" >&2
    status=1
fi
stop_server
if grep -a -n "thread '.*' panicked at" "$server_log" >&2; then
    say "credits-local panicked during the run" >&2
    status=1
fi
if [[ $status -ne 0 ]]; then
    say "FAILED (exit $status); server log: ${server_log#"$repo_root/"}" >&2
    exit "$status"
fi
say "passed"
