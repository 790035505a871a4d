#!/usr/bin/env bash
# bench/sends.sh -- twilio_send_sms calls/s through the agent socket against a
# local nginx standing in for Twilio (POST Messages.json answers 201), with
# durable write-ahead records (synchronous=FULL) and the audit trail on.
# Knobs: SENDS_CONNS="1 16" SENDS_DURATION=5 SENDS_PRIOR=0 (earlier sends put in
# the table first, 2 to 30 days old), SENDS_PORT=18580, SB_BIN=./switchboard.
# Prints one line per concurrency: "sends C=16: 1234 calls/s, p50 5.1 ms, ...".
set -euo pipefail
umask 077
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SB_BIN=${SB_BIN:-$ROOT/switchboard}
CONNS=${SENDS_CONNS:-"1 16"}
DURATION=${SENDS_DURATION:-5}
PRIOR=${SENDS_PRIOR:-0}
PORT=${SENDS_PORT:-18580}
OUT=$(mktemp -d /tmp/sb-sends.XXXXXX)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
NGINX_PID="" SB_PID=""
cleanup() {
  for pid in $SB_PID $NGINX_PID; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $SB_PID $NGINX_PID; do wait "$pid" 2>/dev/null || true; done
  [ -n "${SENDS_KEEP:-}" ] || rm -rf "$OUT"
}
trap cleanup EXIT
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 50); do port_free "$PORT" && break; PORT=$((PORT + 1)); done

AC=AC$(printf 'a%.0s' {1..32}); SK=SK$(printf 'c%.0s' {1..32})
B=/2010-04-01/Accounts/$AC
ACCOUNT="{\"sid\":\"$AC\",\"friendly_name\":\"Bench\",\"status\":\"active\",\"type\":\"Full\"}"
NUMBERS="{\"incoming_phone_numbers\":[{\"sid\":\"PN$(printf 'd%.0s' {1..32})\",\"phone_number\":\"+14155550100\",\"friendly_name\":\"Main\",\"capabilities\":{\"voice\":true,\"sms\":true,\"mms\":true}}],\"next_page_uri\":null,\"page\":0,\"page_size\":100}"
CREATE="{\"sid\":\"SM$(printf 'e%.0s' {1..32})\",\"status\":\"queued\",\"to\":\"+14155550101\",\"from\":\"+14155550100\",\"body\":\"b\",\"date_created\":\"Thu, 24 Aug 2023 05:01:45 +0000\",\"num_segments\":\"1\",\"direction\":\"outbound-api\",\"account_sid\":\"$AC\"}"
user_line=""; [ "$(id -u)" = 0 ] && user_line="user nobody nogroup;"
mkdir -p "$OUT/nginx" "$OUT/data"
cat >"$OUT/nginx.conf" <<EOF
$user_line
daemon off;
worker_processes 1;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx/body; proxy_temp_path $OUT/nginx/proxy;
  fastcgi_temp_path $OUT/nginx/fastcgi; uwsgi_temp_path $OUT/nginx/uwsgi; scgi_temp_path $OUT/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$PORT;
    default_type application/json;
    location = $B/Messages.json { if (\$request_method = POST) { return 201 '$CREATE'; } return 200 '{"messages":[]}'; }
    location = $B.json { return 200 '$ACCOUNT'; }
    location = $B/IncomingPhoneNumbers.json { return 200 '$NUMBERS'; }
    location / { return 404; }
  }
}
EOF
"$NGINX" -p "$OUT/nginx" -c "$OUT/nginx.conf" -e "$OUT/nginx-error.log" & NGINX_PID=$!
CONF=$OUT/switchboard.conf.lua
cat >"$CONF" <<EOF
return {
  data_dir = "$OUT/data", agent_socket = "$OUT/agent.sock", admin_socket = "$OUT/admin.sock",
  master_key_file = "$OUT/master.key", log = { level = "warn", file = "$OUT/switchboard.log" },
  limits = { connections = 512 },
  policy_settings = { recipients = { per_recipient = 1000000000, daily_budget = 1000000000 } },
}
EOF
start_sb() {
  "$SB_BIN" serve --config "$CONF" >"$OUT/serve.out" 2>&1 & SB_PID=$!
  for _ in $(seq 1200); do [ -S "$OUT/admin.sock" ] && [ -S "$OUT/agent.sock" ] && break; sleep 0.05; done
}
start_sb
A() { "$SB_BIN" admin --config "$CONF" "$@"; }
A tenant add bench >/dev/null
A tenant features bench +custom.twilio >/dev/null
echo benchSecretValue0123456789 | A twilio connect --tenant bench --account-sid "$AC" --api-key-sid "$SK" \
  --hosts "http://127.0.0.1:$PORT" >/dev/null
A twilio autonomous-sends on --tenant bench --confirm >/dev/null 2>&1
TOKEN=$(A --json agent add --tenant bench --name b --type caioo --tier owner --groups "Twilio Communications" \
  | lua5.4 -e 'io.write(require("cjson").decode(io.read("a")).token)')
if [ "$PRIOR" -gt 0 ]; then
  kill -TERM "$SB_PID"; wait "$SB_PID" 2>/dev/null || true
  sqlite3 "$OUT/data/switchboard.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $PRIOR)
    INSERT INTO sends (tenant_id, agent_id, tool, recipient, request, body_hash, status, sid, created_at, created_unix, updated_at)
    SELECT 1, 1, 'twilio_send_sms', printf('+1415555%04d', i % 10000), x'00', 'h', 'sent', 'SM' || i,
      '2026-01-01T00:00:00Z', strftime('%s', 'now') - 172800 - (i * 2419200 / $PRIOR), '2026-01-01T00:00:00Z' FROM n"
  start_sb
  # recovery gives the fill's latest day of sends their audit records first
  for _ in $(seq 1200); do A status >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1
fi
for c in $CONNS; do
  "$SB_BIN" exec "$ROOT/bench/sends_load.lua" "$OUT/agent.sock" "$TOKEN" "$c" "$DURATION" "$SB_PID"
done
