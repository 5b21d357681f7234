#!/usr/bin/env bash
# Build the Debian package of fedgate with cargo-deb (metadata: [package.metadata.deb] in the
# root Cargo.toml; unit and maintainer scripts: deploy/debian/).
#
#   deploy/build-deb.sh                       # release build, then target/debian/fedgate_*.deb
#                                             # (and fedgate-dbgsym_*.ddeb: the debug symbols)
#   deploy/build-deb.sh --no-build --profile dev --output DIR -- --fast
#                                             # package the binary a `cargo test` already built
#                                             # (what tests/package.rs does; not for release)
#
# Steps: build the binary (unless --no-build), let it write its man pages and shell
# completions (`fedgate generate-assets DIR`, a packaging hook outside the CLI) into
# <target>/<profile>/fedgate-assets/, gzip the man pages, run `cargo deb --no-build`. Arguments after `--` go to
# cargo deb. Needs cargo-deb (scripts/install-test-deps.sh installs the pinned version).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

profile=release
build=1
output=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --output) output=(--output "$2"); shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
    esac
done

command -v cargo-deb >/dev/null 2>&1 || {
    echo "build-deb: cargo-deb is not installed (bash scripts/install-test-deps.sh installs it)" >&2
    exit 1
}

case "$profile" in dev) profile_dir=debug ;; *) profile_dir="$profile" ;; esac
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
bin="$target_dir/$profile_dir/fedgate"

if [ "$build" -eq 1 ]; then
    cargo build --locked --profile "$profile" --bin fedgate
fi
[ -x "$bin" ] || { echo "build-deb: $bin not found (build it, or drop --no-build)" >&2; exit 1; }

assets="$target_dir/$profile_dir/fedgate-assets"
rm -rf "$assets"
"$bin" generate-assets "$assets" >/dev/null
gzip -9n "$assets"/man/*.1

# The release profile keeps line tables (`debug = "line-tables-only"`): the binary in the
# .deb is stripped and its debug symbols go to a separate fedgate-dbgsym .ddeb. The dev
# profile is for tests only (cargo-deb warns that it is not for release) and is stripped.
dbgsym=()
[ "$profile" = dev ] || dbgsym=(--dbgsym)
cargo deb --locked --no-build --profile "$profile" "${dbgsym[@]}" "${output[@]}" "${extra[@]}"
