#!/usr/bin/env bash
# Installs the pinned fuzzer into .tools/afl (git-ignored): cargo-afl from crates.io,
# then the AFL++ runtime and afl-fuzz that cargo-afl ships as source, built with make
# and the C compiler (no LLVM plugins: those need nightly). A second run is a no-op.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AFL_VERSION="0.18.2" # cargo-afl and the `afl` crate in fuzz/Cargo.toml move together
AFL_HOME="$ROOT/.tools/afl"
STAMP="$AFL_HOME/.shardline-stamp"
export XDG_DATA_HOME="$AFL_HOME/share" # where cargo-afl puts AFL++ and its runtime

log() { printf '[shardline] %s\n' "$*" >&2; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$AFL_VERSION $(rustc --version)" ]]; then
  exit 0
fi
command -v make >/dev/null && command -v cc >/dev/null \
  || { log "error: make and a C compiler are needed to build AFL++ (apt-get install build-essential)"; exit 1; }
log "installing cargo-afl $AFL_VERSION into .tools/afl (first run only, ~2 min)"
# The AFL++ runtime is built for one rustc; a new toolchain means a rebuild.
rm -rf "$AFL_HOME"
mkdir -p "$AFL_HOME"
cargo install --quiet --locked --root "$AFL_HOME" --version "$AFL_VERSION" cargo-afl
# Installing builds AFL++ (cargo-afl's build script); if that was skipped, build it now.
compgen -G "$XDG_DATA_HOME/afl.rs/*/afl.rs-$AFL_VERSION/afl/bin/afl-fuzz" >/dev/null \
  || "$AFL_HOME/bin/cargo-afl" afl config --build --force
echo "$AFL_VERSION $(rustc --version)" >"$STAMP"
