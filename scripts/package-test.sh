#!/usr/bin/env bash
# The Debian package, end to end: builds it (packaging/build-deb.sh), installs it with dpkg,
# checks its files, the plico user, the directories' owners and modes and the conffile, runs
# `systemd-analyze verify` on the installed unit and prints its `systemd-analyze security`
# score, then runs the installed binary as the plico user the way the unit does (init, serve
# with /etc/plico/plico.toml, unseal, status) and removes the package.
#
#   bash scripts/package-test.sh              # packages the test build (target/debug): fast
#   PLICO_DEB_PROFILE=release bash scripts/package-test.sh   # the release build that ships
#
# scripts/test.sh calls it after the tests, when it runs as root (dpkg needs root) on a machine
# where no plico package is installed (it does not touch a real installation). No systemd runs
# in the CI container, so the unit is checked offline and the service is run by hand as its user.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> package: %s\n' "$*"; }
fail() { printf 'package-test: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || { echo "package-test: skipped (dpkg -i needs root)"; exit 0; }
if dpkg-query -W -f='${Status}' plico 2>/dev/null | grep -q 'installed'; then
  echo "package-test: skipped (a plico package is installed here; not touching it)"; exit 0
fi
if [ -e /var/lib/plico ] || getent passwd plico >/dev/null; then
  echo "package-test: skipped (/var/lib/plico or a plico user exists here; not touching it)"; exit 0
fi

start=$(date +%s)
if ! command -v cargo-deb >/dev/null; then
  log "installing cargo-deb"
  cargo install cargo-deb --locked
fi
missing=()
for p in systemd; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # systemd-analyze (no service is started: there is no systemd running in the container).
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

log "building the .deb (profile ${PLICO_DEB_PROFILE:-dev})"
built=$(date +%s)
PLICO_DEB_PROFILE="${PLICO_DEB_PROFILE:-dev}" bash packaging/build-deb.sh
deb=$(ls -t target/debian/plico_*.deb | head -1)
echo "package: $deb, $(du -h "$deb" | cut -f1), built in $(( $(date +%s) - built )) s"

tmp=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  dpkg --purge plico >/dev/null 2>&1 || true
  # Only what this script made: it refused to start if any of these existed.
  rm -rf /var/lib/plico /var/spool/plico /etc/plico "$tmp"
  getent passwd plico >/dev/null && userdel plico || true
  getent group plico >/dev/null && groupdel plico || true
}
trap cleanup EXIT

log "dpkg -i"
dpkg -i "$deb"

log "files"
for f in /usr/bin/plico /etc/plico/plico.toml /usr/lib/systemd/system/plico.service \
         /usr/share/doc/plico/plico.example.toml /usr/share/doc/plico/operations.md \
         /usr/share/man/man1/plico.1.gz /usr/share/man/man1/plico-serve.1.gz \
         /usr/share/man/man1/plico-config-check.1.gz \
         /usr/share/bash-completion/completions/plico /usr/share/zsh/vendor-completions/_plico \
         /usr/share/fish/vendor_completions.d/plico.fish; do
  [ -e "$f" ] || fail "$f is not installed"
done
# (grep reads captured output: with pipefail, `cmd | grep -q` fails when grep's early exit
# ends cmd with SIGPIPE.)
grep -q '/etc/plico/plico.toml' <<<"$(dpkg-query -W -f='${Conffiles}\n' plico)" \
  || fail "/etc/plico/plico.toml is not a conffile"
echo "package: $(dpkg -L plico | wc -l) paths installed"

log "user and directories"
grep -q ':/var/lib/plico:/usr/sbin/nologin$' <<<"$(getent passwd plico)" || fail "plico user: $(getent passwd plico)"
[ "$(id -u plico)" -lt 1000 ] || fail "plico is not a system user"
expect_stat() {
  local got; got=$(stat -c '%a %U:%G' "$1")
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
  echo "package: $1 $got"
}
expect_stat /var/lib/plico "700 plico:plico"
expect_stat /var/spool/plico "750 plico:plico"
expect_stat /etc/plico "750 root:plico"
expect_stat /etc/plico/plico.toml "640 root:plico"
systemctl is-enabled plico.service >/dev/null 2>&1 && fail "the unit is enabled on install"

log "the installed configuration, as the plico user"
runuser -u plico -- plico config check /etc/plico/plico.toml >"$tmp/effective.toml"
grep -q '^data_dir = "/var/lib/plico"$' "$tmp/effective.toml" || fail "config check: $(cat "$tmp/effective.toml")"

log "systemd-analyze verify"
systemd-analyze verify /usr/lib/systemd/system/plico.service
log "systemd-analyze security"
# --offline: the unit file as written, no running manager needed.
# What it still flags (each line with its exposure), then the overall score.
systemd-analyze security --offline=yes /usr/lib/systemd/system/plico.service | grep -v '✓' || true

log "the service as the unit runs it: plico user, /etc/plico/plico.toml"
install -d -m 0700 -o plico -g plico "$tmp/ceremony"
chmod 0711 "$tmp"
runuser -u plico -- plico init --data /var/lib/plico --shares 3 --threshold 2 \
  --share-dir "$tmp/ceremony" --admin-token-file "$tmp/ceremony/admin.token" >/dev/null
expect_stat /var/lib/plico "700 plico:plico"
PLICO_LISTEN=127.0.0.1:0 runuser -u plico -- plico serve --config /etc/plico/plico.toml \
  >"$tmp/serve.out" 2>"$tmp/serve.err" &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q 'listening on' "$tmp/serve.out" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || fail "serve ended: $(cat "$tmp/serve.err")"
  sleep 0.2
done
url=$(sed -n 's/^plico: listening on //p' "$tmp/serve.out")
[ -n "$url" ] || fail "serve did not listen: $(cat "$tmp/serve.err")"
grep -q '^sealed: *yes' <<<"$(plico status --addr "$url")" || fail "not sealed at start"
plico unseal --addr "$url" "$tmp/ceremony/share-1-of-3.txt" >/dev/null
plico unseal --addr "$url" "$tmp/ceremony/share-3-of-3.txt" >/dev/null
plico status --addr "$url" >"$tmp/status.txt"
grep -q '^sealed: *no' "$tmp/status.txt" || fail "not unsealed: $(cat "$tmp/status.txt")"
kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=""
[ -n "$(find /var/lib/plico ! -user plico)" ] && fail "files in /var/lib/plico not owned by plico"
echo "package: init, serve, unseal and status ran as the plico user"

log "dpkg -r"
dpkg -r plico >/dev/null
[ -e /usr/bin/plico ] && fail "/usr/bin/plico left after dpkg -r"
[ -d /var/lib/plico ] || fail "dpkg -r removed the vault /var/lib/plico"
echo "package: removed; the vault and the conffile stay (dpkg -r), as they should"
echo "package: done in $(( $(date +%s) - start )) s"
