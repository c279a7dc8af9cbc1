#!/usr/bin/env bash
# Lints template.yaml with a pinned cfn-lint installed into <repo>/.venv.
# Exits non-zero on any finding (error, warning or informational), so CI can
# require a clean template.
#
# Idempotent: when the pinned version is already installed it does not touch
# pip, so re-running it costs only the lint itself.
set -euo pipefail

# Pinned: new cfn-lint releases add rules and would turn a clean build red
# without any change here.
readonly CFN_LINT_VERSION="1.58.0"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
python="$venv/bin/python"

if [[ ! -x "$python" ]]; then
    echo "lint-template: creating virtualenv at $venv"
    if ! python3 -m venv "$venv"; then
        echo "lint-template: 'python3 -m venv' failed; on Debian/Ubuntu install the" \
             "venv module first: apt-get install -y python3-venv" >&2
        exit 1
    fi
fi

if "$python" - "$CFN_LINT_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version

sys.exit(0 if version("cfn-lint") == sys.argv[1] else 1)
PY
then
    :
else
    echo "lint-template: installing cfn-lint==$CFN_LINT_VERSION into $venv"
    "$python" -m pip install --disable-pip-version-check --quiet "cfn-lint==$CFN_LINT_VERSION"
fi

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
