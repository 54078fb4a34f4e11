#!/usr/bin/env bash
# Capacity run: for each player count, the ideal echo server, then the game server,
# each played by `gameload` over real UDP on this machine. Every step is bounded by
# `timeout`. Prints one JSON line per measurement.
#
#   bench/capacity.sh 1000 5000
#
# Env: WARMUP (s, default 5), DURATION (s, default 20), GAMESERVER_FLAGS (extra flags,
# e.g. the broker path or Kafka), GAMELOAD_FLAGS (extra `gameload run` flags, e.g.
# --threads 1), SKIP_ECHO=1 (game server only), LABEL,
# CARGO_TARGET_DIR (where the release binaries are built).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p gameserver -p tanks-bench --bin gameserver --bin gameload >&2
TARGET=${CARGO_TARGET_DIR:-target}/release
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-20}
BOUND=$((WARMUP + DURATION + 30))
UDP=127.0.0.1:39999 ECHO=127.0.0.1:39998 CONTROL=127.0.0.1:39890 METRICS=127.0.0.1:39001 TCP=127.0.0.1:39889

for players in "$@"; do
  if [ -z "${SKIP_ECHO:-}" ]; then
  timeout "$BOUND" "$TARGET/gameload" echo --addr "$ECHO" --seconds "$BOUND" 2>/dev/null &
  sleep 0.5
  echo_pid=$(pgrep -P $! | head -1)
  timeout "$BOUND" "$TARGET/gameload" run --label echo --server "$ECHO" --players "$players" \
    --warmup "$WARMUP" --duration "$DURATION" --server-pid "$echo_pid" ${GAMELOAD_FLAGS:-} || true
  kill "$echo_pid" 2>/dev/null || true; wait 2>/dev/null || true
  fi

  sessions=$(( (players + 13) / 14 + 8 ))
  RUST_LOG=warn timeout "$BOUND" "$TARGET/gameserver" --udp-addr "$UDP" --tcp-addr "$TCP" \
    --control-addr "$CONTROL" --metrics-addr "$METRICS" --max-sessions "$sessions" \
    --events-file /tmp/gameload-events.jsonl --drain-seconds 1 ${GAMESERVER_FLAGS:-} &
  sleep 1
  server_pid=$(pgrep -P $! | head -1)
  timeout "$BOUND" "$TARGET/gameload" run --label "${LABEL:-gameserver}" --server "$UDP" --players "$players" \
    --control "$CONTROL" --metrics "$METRICS" --warmup "$WARMUP" --duration "$DURATION" \
    --server-pid "$server_pid" ${GAMELOAD_FLAGS:-} || true
  kill -TERM "$server_pid" 2>/dev/null || true; wait 2>/dev/null || true
  rm -f /tmp/gameload-events.jsonl
done
