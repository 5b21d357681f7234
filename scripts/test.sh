#!/usr/bin/env bash
# The project's test command (see README): installs/verifies the real-peer interop
# dependencies (Prosody, ejabberd, slixmpp venv), then runs the whole workspace test suite.
# Extra arguments are passed to `cargo test`, e.g. `scripts/test.sh --test interop -- --nocapture`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-test-deps.sh

export FEDGATE_INTEROP_PYTHON="$repo_root/.venv-interop/bin/python"
# ejabberdctl lives in /usr/sbin, which is not on every non-root PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac

exec cargo test --workspace --locked "$@"
