#!/usr/bin/env bash
# Starts the local AWS emulators on 127.0.0.1 (installing them first if needed). Every
# test creates its own streams on one kinesis-local, so its account limits (50 shards,
# 10 on-demand streams by default) are raised.
#
#   Kinesis   kinesis-local (kinesis-mock)  http://127.0.0.1:4568
#   DynamoDB, SQS, ...  moto_server          http://127.0.0.1:4566
# Writes their pids to .tools/run/ and waits until both answer. Running it again while
# they are up does nothing. Stop them with infra/local/down.sh (by pid).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/infra/local/install.sh" emulators
mkdir -p "$RUN"

start() { # NAME PORT CMD...
  local name="$1" port="$2"; shift 2
  local pidfile="$RUN/$name.pid"
  if pid_alive "$pidfile"; then
    port_open "$port" && { log "$name already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return 0; }
    die "$name (pid $(cat "$pidfile")) is running but not on port $port; run 'make down' first"
  fi
  rm -f "$pidfile"
  if port_open "$port"; then
    die "port $port on 127.0.0.1 is taken by another process, so $name cannot start. Stop that process, or set SHARDLINE_${name^^}_PORT and the matching AWS_ENDPOINT_URL* variables."
  fi
  "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$pidfile"
  log "started $name (pid $!) on 127.0.0.1:$port, log in ${RUN#"$ROOT"/}/$name.log"
}

start moto "$MOTO_PORT" "$EMU_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
KINESIS_MOCK_CERT_PATH="$KINESIS_PKG/server.json" \
KINESIS_MOCK_PLAIN_PORT="$KINESIS_PORT" \
KINESIS_MOCK_TLS_PORT="$KINESIS_TLS_PORT" \
CREATE_STREAM_DURATION=0ms DELETE_STREAM_DURATION=0ms UPDATE_SHARD_COUNT_DURATION=0ms \
SHARD_LIMIT=10000 ON_DEMAND_STREAM_COUNT_LIMIT=1000 \
LOG_LEVEL=WARN \
  start kinesis "$KINESIS_PORT" node "$KINESIS_PKG/main.js"

# Wait (bounded: 60 s) until both answer a real request.
for name_port in "moto:$MOTO_PORT" "kinesis:$KINESIS_PORT"; do
  name="${name_port%%:*}"; port="${name_port##*:}"
  for _ in $(seq 1 240); do
    port_open "$port" && break
    pid_alive "$RUN/$name.pid" || die "$name exited during start; see ${RUN#"$ROOT"/}/$name.log: $(tail -n 5 "$RUN/$name.log")"
    sleep 0.25
  done
  port_open "$port" || die "$name did not answer on 127.0.0.1:$port within 60 s; see ${RUN#"$ROOT"/}/$name.log"
done
log "emulators up. Point the AWS SDK at them with:"
cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT
export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:$KINESIS_PORT
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
ENV
