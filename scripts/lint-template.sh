#!/usr/bin/env bash
# Lints template.yaml with a pinned cfn-lint installed into <repo>/.venv.
# Exits non-zero on any finding (error, warning or informational), so CI can
# require a clean template.
#
# Idempotent: when the pinned version is already installed it does not touch
# pip, so re-running it costs only the lint itself.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
# cfn-lint is pinned in scripts/requirements-test.txt (new releases add rules
# and would turn a clean build red); the setup script installs it.
"$repo_root/scripts/setup-test-env.sh" > /dev/null
CFN_LINT_VERSION="$("$venv/bin/cfn-lint" --version | awk '{print $2}')"

cd "$repo_root"
echo "lint-template: cfn-lint $CFN_LINT_VERSION template.yaml"
# cfn-lint's exit code is a bit mask (2 = error, 4 = warning, 8 = informational);
# any non-zero value is a finding and fails this script.
status=0
"$venv/bin/cfn-lint" --include-checks I -- template.yaml || status=$?
if [[ $status -ne 0 ]]; then
    echo "lint-template: cfn-lint reported findings (exit $status)" >&2
    exit "$status"
fi
echo "lint-template: template.yaml is clean"
