#!/usr/bin/env bash
# Installs what `sam build` and the arm64 smoke run need, pinned, on top of the
# test environment:
#   - aws-sam-cli, cargo-lambda and ziglang (scripts/requirements-sam.txt)
#     into <repo>/.venv, resolved together with scripts/requirements-test.txt;
#   - the Rust target aarch64-unknown-linux-gnu (rustup);
#   - with --qemu (scripts/sam-smoke): qemu-aarch64 and the arm64 C library
#     (Debian: qemu-user, libc6-arm64-cross), to run the arm64 bootstraps on
#     another architecture. Installed with apt-get when running as root (CI);
#     otherwise it says what to install and fails. Deploying does not need them.
#
# Idempotent: a re-run with everything in place takes well under a second.
set -euo pipefail

with_qemu=0
case "${1:-}" in
    --qemu) with_qemu=1 ;;
    "") ;;
    *) echo "usage: scripts/setup-sam-env.sh [--qemu]" >&2; exit 2 ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
say() { printf 'setup-sam-env: %s\n' "$*"; }

# --- Python tools: the same .venv as the test tools -------------------------------
"$repo_root/scripts/setup-test-env.sh" > /dev/null
requirements=("$repo_root/scripts/requirements-test.txt" "$repo_root/scripts/requirements-sam.txt")
stamp="$venv/.requirements-sam.sha256"
wanted="$(cat "${requirements[@]}" "$repo_root/scripts/requirements-openapi.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    say "aws-sam-cli, cargo-lambda, ziglang already installed in $venv"
else
    say "installing scripts/requirements-sam.txt into $venv"
    # One resolution with the test requirements, so neither set can move the
    # other's pins; `pip check` then proves the environment consistent.
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
        -r "${requirements[0]}" -r "${requirements[1]}"
    "$venv/bin/python" -m pip check --disable-pip-version-check > /dev/null
    echo "$wanted" > "$stamp"
fi

# --- Rust target ------------------------------------------------------------------
target=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$target"; then
    say "adding the Rust target $target"
    rustup target add "$target"
fi

# --- qemu-aarch64 and the arm64 C library ----------------------------------------
arch="$(uname -m)"
if ((with_qemu)) && [[ "$arch" != aarch64 && "$arch" != arm64 ]]; then
    missing=()
    command -v qemu-aarch64 > /dev/null || missing+=(qemu-user)
    [[ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]] || missing+=(libc6-arm64-cross)
    if ((${#missing[@]})); then
        if [[ "$(id -u)" -ne 0 ]]; then
            say "missing ${missing[*]}: the arm64 bootstraps run under qemu-aarch64 here." >&2
            say "install them once (Debian/Ubuntu): sudo apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
        if ! command -v apt-get > /dev/null; then
            say "missing ${missing[*]} and no apt-get: install qemu-aarch64 (user mode) and an" \
                "aarch64 glibc under /usr/aarch64-linux-gnu by hand" >&2
            exit 1
        fi
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
    fi
fi
say "ready: $("$venv/bin/sam" --version), $("$venv/bin/cargo-lambda" lambda --version), zig $("$venv/bin/python" -m ziglang version)"
