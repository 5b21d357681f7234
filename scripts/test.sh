#!/usr/bin/env bash
# The project's test command (see README): installs/verifies the real-peer interop
# dependencies (Prosody, ejabberd, slixmpp venv), then runs the whole workspace test suite.
# Extra arguments are passed to `cargo test`, e.g. `scripts/test.sh --test interop -- --nocapture`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-test-deps.sh

# A fresh build has no use for incremental caches, which double the target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# If the build dies for want of disk, the log shows how much there was.
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
mkdir -p "$target_dir"
echo "test.sh: free disk at $target_dir: $(df -Ph "$target_dir" | awk 'NR == 2 { print $4 }')"

export FEDGATE_INTEROP_PYTHON="$repo_root/.venv-interop/bin/python"
# ejabberdctl lives in /usr/sbin, which is not on every non-root PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac

# Run everything, then close with one total line over all test binaries (cargo's own last
# line is the doc-test summary of the last crate, which may say "0 passed").
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "fedgate: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
