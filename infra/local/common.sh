# Shared settings for the local emulator scripts. Sourced, not run.
# Everything lives under .tools/ at the repository root (git-ignored).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.tools"
EMU_VENV="$TOOLS/venv-emu"
TOOLS_VENV="$TOOLS/venv-tools"
CHECKOV_VENV="$TOOLS/venv-checkov"
NODE_DIR="$TOOLS/node"
KINESIS_PKG="$NODE_DIR/node_modules/kinesis-local"
# Ports fixed by DESIGN.md; overridable for a machine where they are taken.
MOTO_PORT="${SHARDLINE_MOTO_PORT:-4566}"
KINESIS_PORT="${SHARDLINE_KINESIS_PORT:-4568}"
KINESIS_TLS_PORT="${SHARDLINE_KINESIS_TLS_PORT:-4570}"
# Pids and logs per port: emulators on other ports (a second checkout, a long soak) are
# separate instances, never taken for these ones nor stopped with them.
if [[ "$MOTO_PORT" == 4566 ]]; then RUN="$TOOLS/run"; else RUN="$TOOLS/run-$MOTO_PORT"; fi
PYTHON="${PYTHON:-python3}"

log() { printf '[shardline] %s\n' "$*" >&2; }
die() { printf '[shardline] error: %s\n' "$*" >&2; exit 1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive FILE: true when FILE holds the pid of a live process.
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stamp_ok DIR REQFILE: true when DIR was installed from exactly this REQFILE.
stamp_ok() { [[ -f "$1/.shardline-stamp" ]] && cmp -s "$1/.shardline-stamp" "$2"; }
