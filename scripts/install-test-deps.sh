#!/usr/bin/env bash
# Install the real-peer interop test dependencies (idempotent, quiet).
#
#   * Debian bookworm packages: prosody, lua-unbound, ejabberd (XMPP peers);
#     sip-tester (sipp), socat, openssl (s_client), kamailio + kamailio-tls-modules (SIP peers);
#     slapd + ldap-utils (the LDAP user source) (+ their deps),
#     redis-server (the cluster store: tests start their own instance on loopback),
#     prometheus (for promtool: the alert rules are checked and unit-tested; the server is
#     never started), systemd (for systemd-analyze: the package's unit is verified),
#     man-db (`man -w` finds the package's man pages; systemd-analyze checks the unit's),
#     adduser (the fedgate package depends on it),
#     python3-venv when the python3 in PATH cannot create a venv.
#     Services are never started: /usr/sbin/policy-rc.d (exit 101) is created
#     for the duration of the install when it is absent, and any prosody /
#     ejabberd / epmd process that appeared during the install is stopped by PID.
#   * A Python venv at <repo>/.venv-interop with the pinned packages from
#     tests/interop/requirements.txt (slixmpp for tests/interop/client.py).
#   * cargo-deb (pinned below, `cargo install --locked`, skipped when that version is
#     installed): tests/package.rs builds, installs and purges the Debian package.
#
# Runs as root on a fresh machine or in CI (CI=true); as non-root it uses
# passwordless sudo for apt when something is missing. A missing peer after the
# run is an error (exit 1), never a skip.
#
# Env: FEDGATE_PYTHON3 (default: python3) = interpreter used to create the venv.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-interop"
requirements="$repo_root/tests/interop/requirements.txt"
python3_bin="${FEDGATE_PYTHON3:-python3}"
apt_log="$(mktemp -t fedgate-apt.XXXXXX)"
trap 'rm -f "$apt_log"' EXIT

die() {
    echo "install-test-deps: ERROR: $*" >&2
    exit 1
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

pkg_version() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "missing"
}

# PIDs of processes the packages could have started (prosody runs as lua5.4).
daemon_pids() {
    local pid cmd
    for pid in /proc/[0-9]*; do
        pid="${pid#/proc/}"
        cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || continue
        case "$cmd" in
            *bin/prosody*|*beam.smp*ejabberd*|*/epmd\ *|*/epmd|epmd\ *|*sbin/slapd*|*sbin/kamailio*|*bin/prometheus\ *|*bin/prometheus|*bin/redis-server*) echo "$pid" ;;
        esac
    done
}

# ---------------------------------------------------------------- apt packages
missing=()
peer_pkgs=(prosody lua-unbound ejabberd sip-tester socat openssl kamailio kamailio-tls-modules slapd ldap-utils redis-server prometheus systemd man-db adduser)
for pkg in "${peer_pkgs[@]}"; do
    pkg_installed "$pkg" || missing+=("$pkg")
done
# The venv is (re)created when missing, broken or built from other requirements; only then
# does the interpreter need venv + ensurepip (Debian: python3-venv).
[ -f "$requirements" ] || die "$requirements not found"
req_hash="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.fedgate-requirements.sha256"
need_venv=0
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$req_hash" ] ||
    ! "$venv/bin/python" -c 'import slixmpp' >/dev/null 2>&1; then
    need_venv=1
    if ! command -v "$python3_bin" >/dev/null 2>&1; then
        [ "$python3_bin" = python3 ] || die "FEDGATE_PYTHON3=$python3_bin not found"
        missing+=(python3 python3-venv)
    elif ! "$python3_bin" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available (Debian bookworm expected)"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n)
        else
            die "missing ${missing[*]}: run this script as root (or with passwordless sudo)"
        fi
    fi
    echo "install-test-deps: installing ${missing[*]}"

    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# fedgate install-test-deps: do not start services\nexit 101\n' |
            "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 0755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    before="$(daemon_pids | sort)"

    # slapd asks debconf questions; answer "no initial database" (tests make their own).
    if command -v debconf-set-selections >/dev/null 2>&1; then
        echo 'slapd slapd/no_configuration boolean true' | "${SUDO[@]}" debconf-set-selections || true
    fi
    status=0
    {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq update &&
            "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -y \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                install --no-install-recommends "${missing[@]}"
    } >"$apt_log" 2>&1 || status=$?

    # Stop anything the maintainer scripts started anyway, by PID.
    after="$(daemon_pids | sort)"
    new_pids="$(comm -13 <(echo "$before") <(echo "$after") | grep . || true)"
    if [ -n "$new_pids" ]; then
        echo "install-test-deps: stopping daemons started by the packages: $(echo $new_pids)"
        for pid in $new_pids; do "${SUDO[@]}" kill -TERM "$pid" 2>/dev/null || true; done
        for _ in $(seq 50); do
            alive=""
            for pid in $new_pids; do [ -d "/proc/$pid" ] && alive="$alive $pid"; done
            [ -z "$alive" ] && break
            sleep 0.1
        done
        for pid in $alive; do "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true; done
    fi
    if [ "$created_policy" -eq 1 ]; then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    fi
    if [ "$status" -ne 0 ]; then
        cat "$apt_log" >&2
        die "apt-get failed (exit $status) installing ${missing[*]}"
    fi
fi

# ----------------------------------------------------------------- python venv
if [ "$need_venv" -eq 1 ]; then
    echo "install-test-deps: creating $venv"
    "$python3_bin" -m venv --clear "$venv" || die "could not create the venv with $python3_bin"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
        -r "$requirements" >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "pip install failed"; }
    echo "$req_hash" >"$stamp"
fi

# ------------------------------------------------------------------- cargo-deb
cargo_deb_version=3.8.0
if [ "$(cargo-deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (needed to install cargo-deb)"
    echo "install-test-deps: installing cargo-deb $cargo_deb_version (cargo install, a few minutes)"
    cargo install --quiet --locked cargo-deb --version "$cargo_deb_version" >"$apt_log" 2>&1 ||
        { cat "$apt_log" >&2; die "cargo install cargo-deb failed"; }
fi

# ---------------------------------------------------------------- verification
problems=()
for pkg in "${peer_pkgs[@]}"; do
    pkg_installed "$pkg" || problems+=("package $pkg is not installed")
done
find_bin() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" 2>/dev/null; }
for bin in prosody prosodyctl ejabberdctl lua5.4 sipp socat openssl kamailio slapd slapadd ldapsearch redis-server redis-cli promtool systemd-analyze cargo-deb; do
    find_bin "$bin" >/dev/null || problems+=("$bin not found")
done
if find_bin lua5.4 >/dev/null && ! lua5.4 -e 'require "lunbound"' >/dev/null 2>&1; then
    problems+=("lua-unbound (lunbound) cannot be loaded by lua5.4")
fi
slixmpp_version="$("$venv/bin/python" -c 'import slixmpp; print(slixmpp.__version__)' 2>/dev/null)" ||
    problems+=("slixmpp cannot be imported by $venv/bin/python")
if [ "${#problems[@]}" -gt 0 ]; then
    for p in "${problems[@]}"; do echo "install-test-deps: ERROR: $p" >&2; done
    die "interop test dependencies are incomplete (a missing peer is a failure, not a skip)"
fi

echo "prosody     $(pkg_version prosody)"
echo "lua-unbound $(pkg_version lua-unbound)"
echo "ejabberd    $(pkg_version ejabberd)"
echo "erlang      $(pkg_version erlang-base) (erlang-p1-xmpp $(pkg_version erlang-p1-xmpp))"
echo "python      $("$venv/bin/python" -c 'import platform; print(platform.python_version())') ($venv)"
echo "slixmpp     $slixmpp_version"
echo "sipp        $(pkg_version sip-tester)"
echo "socat       $(pkg_version socat)"
echo "kamailio    $(pkg_version kamailio) (tls $(pkg_version kamailio-tls-modules))"
echo "slapd       $(pkg_version slapd)"
echo "redis       $(pkg_version redis-server)"
echo "promtool    $(pkg_version prometheus)"
echo "systemd     $(pkg_version systemd)"
echo "cargo-deb   $(cargo-deb --version 2>/dev/null)"
