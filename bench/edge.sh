#!/usr/bin/env bash
# The edge's cost: the same game server played by `gameload` directly and through the
# real Nginx edge (config rendered by the operator's edge::render), in the same run,
# alternating, ROUNDS times. Prints one JSON line per measurement, then the ratios
# edge / direct of latency (p50, p99) and of CPU (game server + edge vs game server).
#
#   bench/edge.sh 1000
#
# Env: WARMUP (s, default 5), DURATION (s, default 20), ROUNDS (default 2),
# CARGO_TARGET_DIR (where the binaries are built), PROFILE (cargo profile, default
# release; `dev` for the debug build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
players=${1:-1000}
PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" -p gameserver -p tanks-bench --bin gameserver --bin gameload >&2
TARGET=${CARGO_TARGET_DIR:-target}/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
BOUND=$(( (WARMUP + DURATION + 30) * ROUNDS * 2 + 30 ))
UDP=127.0.0.1:39999 EDGE_PORT=39997 CONTROL=127.0.0.1:39890 METRICS=127.0.0.1:39001 TCP=127.0.0.1:39889
DIR=$(mktemp -d /tmp/tanks-edge-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT

module=""
if ! nginx -V 2>&1 | grep -q -- '--with-stream\( \|$\)'; then
  for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/lib64/nginx/modules/ngx_stream_module.so; do
    if [ -e "$m" ]; then module=$m; break; fi
  done
fi
"$TARGET/gameload" edge-config --listen "$EDGE_PORT" --upstream "$UDP" --dir "$DIR" \
  ${module:+--stream-module "$module"} > "$DIR/nginx.conf"
nginx -t -q -p "$DIR" -e "$DIR/error.log" -c "$DIR/nginx.conf"
timeout "$BOUND" nginx -p "$DIR" -e "$DIR/error.log" -c "$DIR/nginx.conf" &
sleep 0.5
nginx_master=$(cat "$DIR/nginx.pid")
edge_pids="$nginx_master,$(pgrep -d, -P "$nginx_master")"

sessions=$(( (players + 13) / 14 * ROUNDS * 2 + 8 ))
RUST_LOG=warn timeout "$BOUND" "$TARGET/gameserver" --udp-addr "$UDP" --tcp-addr "$TCP" \
  --control-addr "$CONTROL" --metrics-addr "$METRICS" --max-sessions "$sessions" \
  --events-file "$DIR/events.jsonl" --drain-seconds 1 --consume-matchmaking false &
sleep 1
server_pid=$(pgrep -P $! | head -1)
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

run() { # label server [extra flags]
  timeout $(( WARMUP + DURATION + 30 )) "$TARGET/gameload" run --label "$1" --server "$2" \
    --players "$players" --control "$CONTROL" --metrics "$METRICS" --warmup "$WARMUP" \
    --duration "$DURATION" --server-pid "$server_pid" "${@:3}" | tee -a "$DIR/results.jsonl"
}
for _ in $(seq "$ROUNDS"); do
  run direct "$UDP"
  run edge "127.0.0.1:$EDGE_PORT" --edge-pids "$edge_pids"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$DIR/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def mean(label, f):
    v = [f(r) for r in rows if r["label"] == label]
    return sum(v) / len(v)
out = {}
for name, f in [("latency_p50", lambda r: r["latency_ms"]["p50"]),
                ("latency_p99", lambda r: r["latency_ms"]["p99"]),
                ("within_two_ticks", lambda r: r["within_two_ticks_share"]),
                ("cpu_cores", lambda r: r["server_cpu_cores"] + (r.get("edge_cpu_cores") or 0))]:
    d, e = mean("direct", f), mean("edge", f)
    out[name] = {"direct": round(d, 3), "edge": round(e, 3), "ratio": round(e / d, 2) if d else None}
out["edge_cpu_cores"] = round(mean("edge", lambda r: r["edge_cpu_cores"]), 3)
print(json.dumps({"label": "edge_vs_direct", **out}))
PY
