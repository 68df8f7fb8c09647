#!/usr/bin/env bash
# Builds plico's Debian package into target/debian/:
#
#   bash packaging/build-deb.sh                 # release build (what ships)
#   PLICO_DEB_PROFILE=dev bash packaging/build-deb.sh   # package the test build (CI's install test)
#
# cargo-deb cannot run a generator, so this script does, in order: builds the binary, has it
# write its man pages (`plico man`, hidden) and shell completions (`plico completions`) into
# target/package/, then runs `cargo deb --no-build`, whose [package.metadata.deb] (root
# Cargo.toml) takes them from there. Needs cargo-deb (`cargo install cargo-deb --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PLICO_DEB_PROFILE:-release}"
case "$profile" in
  dev) dir=debug ;;
  *) dir="$profile" ;;
esac

cargo build --locked --profile "$profile" -p plico --bin plico
bin="target/$dir/plico"

out=target/package
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$bin" man --out "$out/man" >/dev/null
gzip -9n "$out"/man/*.1
"$bin" completions bash >"$out/completions/plico.bash"
"$bin" completions zsh >"$out/completions/_plico"
"$bin" completions fish >"$out/completions/plico.fish"

# The test build carries ~300 MB of debug info: strip it and compress fast (the release profile
# is stripped by cargo-deb anyway, and compressed with xz).
extra=()
[ "$profile" = dev ] && extra+=(--strip --fast)
cargo deb --no-build --locked -p plico --profile "$profile" "${extra[@]}" -o target/debian/
