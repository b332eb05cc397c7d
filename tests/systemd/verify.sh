#!/usr/bin/env bash
# Checks the systemd units and the install layout, offline (no running systemd
# needed: it works as root in a container).
#
#   BIN_DIR=target/debug tests/systemd/verify.sh
#
# 1. `make install DESTDIR=<tmp> PREFIX=/usr` from already-built binaries in
#    BIN_DIR (default: $CARGO_TARGET_DIR or target, release, else debug), then
#    checks every installed file, its mode, and that nothing else was installed.
# 2. A second install must not overwrite the operator's ironcaged.toml or
#    ironcaged.env; `make uninstall` must remove everything else.
# 3. `ironcaged --check-config` on the installed example config.
# 4. The sysusers.d entry, applied with systemd-sysusers --root.
# 5. `systemd-analyze verify --root=<tree>` on the installed units, for
#    PREFIX=/usr and PREFIX=/usr/local (ExecStart= paths must follow PREFIX).
#    systemd-analyze exits 0 on many problems (unknown keys, bad values) and
#    only prints them, so any output line counts as a failure, unless it matches
#    VERIFY_IGNORE (an extended regex; empty by default).
#
# Needs systemd-analyze and systemd-sysusers, both in Debian's `systemd`
# package; installed with apt-get when missing and running as root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

checks=0
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
ok() { checks=$((checks + 1)); printf 'ok   %s\n' "$*"; }
info() { printf '     %s\n' "$*"; }

# --- tools -------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-sysusers >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian package: systemd (for systemd-analyze, systemd-sysusers)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
    else
        fail "systemd-analyze/systemd-sysusers not found: install Debian's 'systemd' package"
    fi
fi
command -v make >/dev/null 2>&1 || fail "make not found: install Debian's 'make' package"
info "$(systemd-analyze --version | head -n1)"

# --- binaries ----------------------------------------------------------------
if [ -z "${BIN_DIR:-}" ]; then
    target=${CARGO_TARGET_DIR:-$ROOT/target}
    if [ -x "$target/release/ironcaged" ] && [ -x "$target/release/ironctl" ] && [ -f "$target/release/libiron_cage.so" ]; then
        BIN_DIR=$target/release
    else
        BIN_DIR=$target/debug
    fi
fi
BIN_DIR=$(cd "$BIN_DIR" 2>/dev/null && pwd) || fail "BIN_DIR ${BIN_DIR} does not exist; build first (cargo build -p ironcaged -p ironctl)"
for b in ironcaged ironctl; do
    [ -x "$BIN_DIR/$b" ] || fail "$BIN_DIR/$b not found; build first (cargo build -p ironcaged -p ironctl) or set BIN_DIR"
done
[ -f "$BIN_DIR/libiron_cage.so" ] || fail "$BIN_DIR/libiron_cage.so not found; build first (cargo build -p iron-cage-py) or set BIN_DIR"

info "binaries from $BIN_DIR"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ironcage-systemd.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# make, with its output kept for when it fails.
mk() {
    if ! make -C "$ROOT" --no-print-directory "$@" >"$TMP/make.log" 2>&1; then
        cat "$TMP/make.log" >&2
        fail "make $*"
    fi
}
mkvar() { make -C "$ROOT" --no-print-directory -s "print-$1" "${@:2}"; }

mode_of() { stat -c '%a' "$1"; }
expect_file() { # path-in-tree mode
    local p=$1 want=$2
    [ -f "$DEST$p" ] || fail "$p was not installed"
    [ "$(mode_of "$DEST$p")" = "$want" ] || fail "$p has mode $(mode_of "$DEST$p"), want $want"
}

# --- 1. install PREFIX=/usr --------------------------------------------------
DEST=$TMP/dest
UNITDIR=$(mkvar UNITDIR PREFIX=/usr)
SYSUSERSDIR=$(mkvar SYSUSERSDIR PREFIX=/usr)
info "PREFIX=/usr: units in $UNITDIR, sysusers.d in $SYSUSERSDIR"
mk install DESTDIR="$DEST" PREFIX=/usr BIN_DIR="$BIN_DIR"

expected=(
    "/usr/bin/ironcaged 755"
    "/usr/bin/ironctl 755"
    "$UNITDIR/ironcaged.service 644"
    "$UNITDIR/ironcage-rotate-secrets.service 644"
    "$UNITDIR/ironcage-rotate-secrets.timer 644"
    "$SYSUSERSDIR/ironcage.conf 644"
    "/etc/ironcage/ironcaged.toml.example 644"
    "/etc/ironcage/ironcaged.env 600"
    "/usr/share/doc/ironcage/rotate-secrets.example 644"
    "/usr/lib/ironcage/python/iron_cage/__init__.py 644"
    "/usr/lib/ironcage/python/iron_cage/__init__.pyi 644"
    "/usr/lib/ironcage/python/iron_cage/_run.py 644"
    "/usr/lib/ironcage/python/iron_cage/py.typed 644"
    "/usr/lib/ironcage/python/iron_cage/_native.abi3.so 755"
)
for e in "${expected[@]}"; do
    set -- $e
    expect_file "$1" "$2"
done
ok "make install PREFIX=/usr: ${#expected[@]} files with their modes (binaries 755, units 644, ironcaged.env 600)"

[ "$(mode_of "$DEST/etc/ironcage")" = 755 ] || fail "/etc/ironcage has mode $(mode_of "$DEST/etc/ironcage"), want 755"
[ ! -e "$DEST/etc/ironcage/ironcaged.toml" ] || fail "install created /etc/ironcage/ironcaged.toml; it must only ship the .example"
ok "/etc/ironcage is 755 and holds no ironcaged.toml (only the example)"

extra=$(cd "$DEST" && find . -type f -printf '/%P\n' | sort | while read -r f; do
    found=
    for e in "${expected[@]}"; do [ "${e% *}" = "$f" ] && found=1; done
    [ -n "$found" ] || echo "$f"
done)
[ -z "$extra" ] || fail "unexpected files installed: $extra"
ok "nothing else installed (no leftover temporary files)"

unit=$DEST$UNITDIR/ironcaged.service
grep -qx 'ExecStart=/usr/bin/ironcaged --config /etc/ironcage/ironcaged.toml' "$unit" || fail "ironcaged.service: unexpected ExecStart= line"
grep -qx 'ExecReload=/usr/bin/ironctl daemon reload' "$unit" || fail "ironcaged.service: unexpected ExecReload= line"
grep -qx 'ExecStart=/usr/bin/ironctl secrets reload' "$DEST$UNITDIR/ironcage-rotate-secrets.service" || fail "rotate-secrets.service: unexpected ExecStart= line"
ok "ExecStart=/ExecReload= name /usr/bin/ironcaged and /usr/bin/ironctl"

"$DEST/usr/bin/ironctl" daemon reload --help >/dev/null 2>&1 || fail "ironctl has no 'daemon reload' command (the unit's ExecReload=)"
ok "ironctl daemon reload exists (ExecReload=)"
"$DEST/usr/bin/ironctl" secrets reload --help >/dev/null 2>&1 || fail "ironctl has no 'secrets reload' command (rotate-secrets.service)"
"$DEST/usr/bin/ironctl" secrets set --help 2>/dev/null | grep -q -- '--value-stdin' || fail "ironctl secrets set has no --value-stdin (packaging/rotate-secrets.example)"
ok "ironctl secrets set --value-stdin and secrets reload exist (rotate-secrets.service)"

# --- 2. reinstall keeps the operator's files; uninstall ------------------------
printf '# the operator config\n' >"$DEST/etc/ironcage/ironcaged.toml"
printf 'OPENAI_API_KEY=sk-test\n' >"$DEST/etc/ironcage/ironcaged.env"
sums_before=$(cd "$DEST/etc/ironcage" && sha256sum ironcaged.toml ironcaged.env)
mk install DESTDIR="$DEST" PREFIX=/usr BIN_DIR="$BIN_DIR"
sums_after=$(cd "$DEST/etc/ironcage" && sha256sum ironcaged.toml ironcaged.env)
[ "$sums_before" = "$sums_after" ] || fail "a second make install changed ironcaged.toml or ironcaged.env"
[ "$(mode_of "$DEST/etc/ironcage/ironcaged.env")" = 600 ] || fail "ironcaged.env mode changed"
ok "a second make install leaves ironcaged.toml and ironcaged.env alone"

cp -a "$DEST" "$TMP/uninst"
mk uninstall DESTDIR="$TMP/uninst" PREFIX=/usr
left=$(cd "$TMP/uninst" && find . -type f -printf '/%P\n' | sort | tr '\n' ' ')
[ "$left" = "/etc/ironcage/ironcaged.env /etc/ironcage/ironcaged.toml " ] || fail "after make uninstall, left: $left"
ok "make uninstall removes everything but the operator's ironcaged.toml and ironcaged.env"

# --- 3. the example config validates -----------------------------------------
out=$("$DEST/usr/bin/ironcaged" --check-config --config "$DEST/etc/ironcage/ironcaged.toml.example" 2>&1) \
    || fail "ironcaged --check-config rejects the example config: $out"
ok "ironcaged --check-config accepts the installed example ($out)"

# The installed daemon finds the installed iron_cage module on its own.
mkdir -p "$TMP/pyagent"
echo 'print("hi")' > "$TMP/pyagent/agent.py"
printf '[[agent]]\nname = "py"\npython = "python3"\nscript = "agent.py"\n' > "$TMP/pyagent/c.toml"
out=$("$DEST/usr/bin/ironcaged" --check-config --config "$TMP/pyagent/c.toml" 2>&1) \
    || fail "the installed ironcaged does not find the installed iron_cage module: $out"
ok "the installed ironcaged finds the iron_cage module in /usr/lib/ironcage/python"

# --- 4. sysusers.d -------------------------------------------------------------
VROOT=$TMP/root
cp -a "$DEST" "$VROOT"
mkdir -p "$VROOT/etc"
systemd-sysusers --root="$VROOT" "$VROOT$SYSUSERSDIR/ironcage.conf" >"$TMP/sysusers.log" 2>&1 \
    || { cat "$TMP/sysusers.log" >&2; fail "systemd-sysusers rejected ironcage.conf"; }
grep -q '^ironcage:x:[0-9]*:[0-9]*:Iron Cage daemon:/var/lib/ironcage:' "$VROOT/etc/passwd" || fail "sysusers created no ironcage user"
grep -q '^ironcage:x:' "$VROOT/etc/group" || fail "sysusers created no ironcage group"
uid=$(awk -F: '$1 == "ironcage" { print $3 }' "$VROOT/etc/passwd")
gid=$(awk -F: '$1 == "ironcage" { print $4 }' "$VROOT/etc/passwd")
[ "$(awk -F: '$1 == "ironcage" { print $3 }' "$VROOT/etc/group")" = "$gid" ] || fail "the ironcage user's primary group is not ironcage"
[ "$uid" -lt 1000 ] || fail "ironcage got uid $uid, not a system uid"
ok "systemd-sysusers creates system user ironcage (uid $uid) in group ironcage (gid $gid)"

# --- 5. systemd-analyze verify -------------------------------------------------
# The tree must hold the targets the units order against (sysinit.target,
# multi-user.target, timers.target, network-online.target...): copy the
# host's. The rotation script is the operator's; stand in for it.
host_units=
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$d/multi-user.target" ]; then host_units=$d; break; fi
done
[ -n "$host_units" ] || fail "no systemd targets on this host (is Debian's 'systemd' package installed?)"

prepare_root() { # tree
    mkdir -p "$1/usr/lib/systemd/system" "$1/etc/ironcage"
    local t
    for t in "$host_units"/*.target; do
        [ -e "$1/usr/lib/systemd/system/${t##*/}" ] || cp "$t" "$1/usr/lib/systemd/system/"
    done
    printf '#!/bin/sh\nexit 0\n' >"$1/etc/ironcage/rotate-secrets"
    chmod 0700 "$1/etc/ironcage/rotate-secrets"
}

IGNORE=${VERIFY_IGNORE:-}
analyze() { # tree unit... ; prints the problems, returns 1 if any
    local tree=$1 out rc=0
    shift
    out=$(systemd-analyze verify --man=no --root="$tree" "$@" 2>&1) || rc=$?
    if [ -n "$IGNORE" ]; then
        out=$(printf '%s\n' "$out" | grep -Ev -- "$IGNORE" || true)
    fi
    out=$(printf '%s\n' "$out" | sed '/^$/d')
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        printf '%s\n' "${out:-systemd-analyze exited $rc}"
        return 1
    fi
}

prepare_root "$VROOT"
units=(ironcaged.service ironcage-rotate-secrets.service ironcage-rotate-secrets.timer)

# First make sure the check can fail: a unit with a typo must be reported.
cp "$VROOT$UNITDIR/ironcaged.service" "$VROOT$UNITDIR/ironcage-selftest.service"
sed -i 's/^KillMode=mixed$/KillMode=mixd/' "$VROOT$UNITDIR/ironcage-selftest.service"
if analyze "$VROOT" ironcage-selftest.service >/dev/null; then
    fail "systemd-analyze verify did not report a bad KillMode=; this check would prove nothing"
fi
rm "$VROOT$UNITDIR/ironcage-selftest.service"
mv "$VROOT/usr/bin/ironcaged" "$VROOT/usr/bin/ironcaged.moved"
if analyze "$VROOT" ironcaged.service >/dev/null; then
    fail "systemd-analyze verify did not report a missing ExecStart= binary"
fi
mv "$VROOT/usr/bin/ironcaged.moved" "$VROOT/usr/bin/ironcaged"
ok "self-test: verify reports a bad value and a missing ExecStart= binary"

problems=$(analyze "$VROOT" "${units[@]}") || fail "systemd-analyze verify (PREFIX=/usr):
$problems"
ok "systemd-analyze verify --root (PREFIX=/usr): ${units[*]}: no warnings"

# PREFIX=/usr/local: units under /usr/local/lib/systemd/system (found by name
# below, so systemd searches there), ExecStart= rewritten to /usr/local/bin.
LDEST=$TMP/dest-local
LUNITDIR=$(mkvar UNITDIR PREFIX=/usr/local)
[ "$LUNITDIR" = /usr/local/lib/systemd/system ] || fail "PREFIX=/usr/local puts units in $LUNITDIR"
mk install DESTDIR="$LDEST" PREFIX=/usr/local BIN_DIR="$BIN_DIR"
for f in /usr/local/bin/ironcaged /usr/local/bin/ironctl "$LUNITDIR/ironcaged.service" /usr/local/lib/sysusers.d/ironcage.conf; do
    [ -f "$LDEST$f" ] || fail "PREFIX=/usr/local: $f was not installed"
done
grep -qx 'ExecStart=/usr/local/bin/ironcaged --config /etc/ironcage/ironcaged.toml' "$LDEST$LUNITDIR/ironcaged.service" \
    || fail "PREFIX=/usr/local: ExecStart= does not name /usr/local/bin/ironcaged"
grep -qx 'ExecReload=/usr/local/bin/ironctl daemon reload' "$LDEST$LUNITDIR/ironcaged.service" \
    || fail "PREFIX=/usr/local: ExecReload= does not name /usr/local/bin/ironctl"
if grep -n '/usr/bin/iron' "$LDEST$LUNITDIR"/*; then fail "PREFIX=/usr/local: a unit still names /usr/bin"; fi
prepare_root "$LDEST"
problems=$(analyze "$LDEST" "${units[@]}") || fail "systemd-analyze verify (PREFIX=/usr/local):
$problems"
ok "PREFIX=/usr/local: units in $LUNITDIR name /usr/local/bin; systemd-analyze verify: no warnings"

# For information: systemd's own exposure score of the sandbox (not a gate).
if score=$(systemd-analyze security --offline=yes --root="$VROOT" ironcaged.service 2>/dev/null | tail -n1); then
    info "systemd-analyze security: ${score#→ }"
fi

echo "systemd units and install layout: all $checks checks ok"
