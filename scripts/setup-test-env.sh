#!/usr/bin/env bash
# Prepares the local test environment: a Python virtualenv at <repo>/.venv with
# the pinned tools of scripts/requirements-test.txt: moto's server (the local
# DynamoDB + Secrets Manager the test harness spawns), cfn-lint and the
# OpenAPI response validator.
#
# Idempotent: re-running it when everything is in place takes well under a
# second, so CI and developers can call it unconditionally before `cargo test`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
python="$venv/bin/python"

if [[ ! -x "$python" ]]; then
    echo "setup-test-env: creating virtualenv at $venv"
    if ! python3 -m venv "$venv"; then
        echo "setup-test-env: 'python3 -m venv' failed; on Debian/Ubuntu install the" \
             "venv module first: apt-get install -y python3-venv" >&2
        exit 1
    fi
fi

# pip is slow even when nothing changes, so a stamp of the requirements
# file's content lets a re-run return at once.
requirements="$repo_root/scripts/requirements-test.txt"
stamp="$venv/.requirements-test.sha256"
wanted="$(cat "$requirements" "$repo_root/scripts/requirements-openapi.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    echo "setup-test-env: test requirements already installed in $venv"
    exit 0
fi

echo "setup-test-env: installing scripts/requirements-test.txt into $venv"
"$python" -m pip install --disable-pip-version-check --quiet -r "$requirements"
echo "$wanted" > "$stamp"
echo "setup-test-env: done"
