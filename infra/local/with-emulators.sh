#!/usr/bin/env bash
# Runs a command with the local emulators up and the SDK pointed at them. Starts the
# emulators if they are not running and stops (by pid) only what it started, whatever
# the command's exit status. Usage: infra/local/with-emulators.sh CMD [ARGS...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=0
if ! pid_alive "$RUN/moto.pid" || ! pid_alive "$RUN/kinesis.pid"; then
  "$ROOT/infra/local/up.sh" >/dev/null
  started=1
fi
if [[ "$started" == 1 && "${SHARDLINE_KEEP_EMULATORS:-0}" != 1 ]]; then
  trap '"$ROOT/infra/local/down.sh"' EXIT
fi
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_ENDPOINT_URL_KINESIS="http://127.0.0.1:$KINESIS_PORT"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
# Never read a developer's real profile or credentials by accident.
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
"$@"
