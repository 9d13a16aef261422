#!/usr/bin/env bash
# Coverage-guided fuzzing of the decoders with afl.rs (AFL++), on stable Rust.
#   fuzz/run.sh [envelope|kpl|txn|all] [SECONDS per target]     (make fuzz TARGET=.. FUZZ_SECONDS=..)
# Installs the fuzzer into .tools/afl on first use, builds the instrumented targets into
# target/fuzz (its own target dir: no lock contention with the workspace build), then
# runs each target for SECONDS on one core, one after another, niced. Findings go to
# target/fuzz/afl/<target>/default/{crashes,hangs}; a fresh run starts from fuzz/seeds.
# Exits 1 when a target saved a crash or a hang.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHICH="${1:-all}"
SECONDS_EACH="${2:-60}"
[[ "$SECONDS_EACH" =~ ^[0-9]+$ ]] || { echo "seconds must be a whole number: $SECONDS_EACH" >&2; exit 2; }
case "$WHICH" in
  all) TARGETS=(envelope kpl txn) ;;
  envelope | kpl | txn) TARGETS=("$WHICH") ;;
  *) echo "unknown target '$WHICH' (envelope, kpl, txn, all)" >&2; exit 2 ;;
esac

"$ROOT/fuzz/install.sh"
export PATH="$ROOT/.tools/afl/bin:$PATH" XDG_DATA_HOME="$ROOT/.tools/afl/share"
export CARGO_TARGET_DIR="$ROOT/target/fuzz"
nice -n 10 cargo afl build --release --bins --features afl --manifest-path "$ROOT/fuzz/Cargo.toml" \
  -j "${FUZZ_BUILD_JOBS:-1}"

# No CPU binding (other builds share the machine: the scheduler places us), no
# core-dump or CPU-governor checks (containers), plain status lines instead of the UI.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  AFL_NO_UI=1 AFL_STATS_INTERVAL=60
dicts() {
  case "$1" in
    envelope) echo "-x $ROOT/fuzz/dict/json.dict -x $ROOT/fuzz/dict/envelope.dict" ;;
    txn) echo "-x $ROOT/fuzz/dict/json.dict -x $ROOT/fuzz/dict/txn.dict" ;;
    kpl) echo "-x $ROOT/fuzz/dict/kpl.dict" ;;
  esac
}
stat() { sed -n "s/^$2 *: *//p" "$1"; }

status=0
summary=()
for t in "${TARGETS[@]}"; do
  out="$CARGO_TARGET_DIR/afl/$t"
  rm -rf "$out"
  mkdir -p "$out"
  echo "[shardline] fuzzing '$t' for ${SECONDS_EACH}s (log: ${out#"$ROOT"/}/afl.log)" >&2
  # -m: a decoder that blows up memory is a crash here, not a machine out of memory.
  # shellcheck disable=SC2046
  nice -n 10 cargo afl fuzz -V "$SECONDS_EACH" -m 2048 -i "$ROOT/fuzz/seeds/$t" -o "$out" \
    $(dicts "$t") "$CARGO_TARGET_DIR/release/$t" >"$out/afl.log" 2>&1 \
    || { tail -n 30 "$out/afl.log" >&2; exit 1; }
  s="$out/default/fuzzer_stats"
  crashes=$(stat "$s" saved_crashes) hangs=$(stat "$s" saved_hangs)
  summary+=("$(printf '%-9s %6ss %12s execs %8s/s  corpus %5s  edges %s  crashes %s  hangs %s' \
    "$t" "$(stat "$s" run_time)" "$(stat "$s" execs_done)" "$(stat "$s" execs_per_sec)" \
    "$(stat "$s" corpus_count)" "$(stat "$s" bitmap_cvg)" "$crashes" "$hangs")")
  if [[ "$crashes" != 0 || "$hangs" != 0 ]]; then
    status=1
    for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
      [[ -e "$f" ]] && echo "  finding: ${f#"$ROOT"/}" >&2
    done
  fi
done
printf '%s\n' "${summary[@]}"
if [[ $status != 0 ]]; then
  echo "[shardline] findings above; replay one with: $CARGO_TARGET_DIR/release/<target> < FILE" >&2
fi
exit $status
