#!/usr/bin/env bash
# Installs pinned tooling into project-local, git-ignored folders under .tools/.
#   install.sh emulators   moto[server] (venv) and kinesis-local (npm)   [default]
#   install.sh tools       cfn-lint, aws-sam-cli, cargo-lambda, ziglang, aws-kinesis-agg
#   install.sh checkov     checkov (own venv: its boto3 pin conflicts with aws-sam-cli)
#   install.sh arm64       the Rust standard library for aarch64 Linux (rustup), for Lambda arm64 builds
#   install.sh all
# Each part is skipped when already installed from the same pinned file, so a second
# run takes well under a second.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_venv() { # DIR REQFILE
  local dir="$1" req="$2"
  if stamp_ok "$dir" "$req"; then return 0; fi
  log "installing $(basename "$req") into ${dir#"$ROOT"/} (first run only)"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  pip_install "$dir" "$req"
  cp "$req" "$dir/.shardline-stamp"
}

# pip_install VENV REQFILE: no wheel cache, so a CI machine keeps only the installed files.
pip_install() {
  "$1/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r "$2"
}

install_node() {
  local pkg="$ROOT/infra/local/package.json"
  if stamp_ok "$NODE_DIR" "$pkg" && [[ -f "$KINESIS_PKG/main.js" ]]; then return 0; fi
  command -v npm >/dev/null || die "npm not found: install Node.js 20+ (it runs the Kinesis emulator)"
  log "installing kinesis-local into ${NODE_DIR#"$ROOT"/} (first run only)"
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp "$pkg" "$NODE_DIR/package.json"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --no-package-lock)
  cp "$pkg" "$NODE_DIR/.shardline-stamp"
}

mkdir -p "$TOOLS"
for part in "${@:-emulators}"; do
  case "$part" in
    emulators) install_venv "$EMU_VENV" "$ROOT/infra/local/requirements-emulators.txt"; install_node ;;
    tools) install_venv "$TOOLS_VENV" "$ROOT/infra/requirements-tools.txt" ;;
    checkov) install_venv "$CHECKOV_VENV" "$ROOT/infra/requirements-checkov.txt" ;;
    arm64)
      rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
        || rustup target add aarch64-unknown-linux-gnu ;;
    all) "$0" emulators tools checkov arm64 ;;
    *) die "unknown part '$part' (emulators, tools, checkov, arm64, all)" ;;
  esac
done
