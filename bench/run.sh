#!/usr/bin/env bash
# bench/run.sh -- `make bench`: what issue 9 asks to measure, as ratios, in
# one run on this machine; writes BENCHMARKS.md (bench/report.lua) and
# prints each target next to its measurement.
#
# Parts (everything on loopback, state under var/bench/, every phase bounded
# by time or by a timeout):
#  load     twilio_search_messages (read) and twilio_send_sms (write) over
#           the agent socket (direct) and the stdio bridge (switchboard
#           connect), 1/16/64 calls in flight on one connection, against a
#           local nginx serving Twilio-shaped JSON; server and bridge CPU per
#           call (/proc/PID/stat), calls/s, p50/p99; the floor: the same GET
#           by curl on one keep-alive connection. ROUNDS rounds, each: floor,
#           [peer], Switchboard, in alternating order of the paths.
#  history  sends/s and read calls/s with earlier sends in the table
#           (BENCH_HISTORY) and then BENCH_AUDIT_ROWS audit records, each
#           round next to a fresh, empty state.
#  audit    `audit verify` at BENCH_VERIFY_ROWS records vs sqlite3 | sha256sum,
#           server peak RSS during it, an agent ping probe meanwhile; verify
#           again after 1,000 new records; an executions page at
#           BENCH_VERIFY_ROWS and at BENCH_AUDIT_ROWS records (with a timeout).
#  idle RSS of a fresh server.
#  pg       read and write calls/s (BENCH_PG_INFLIGHT in flight per node) on
#           one node on PostgreSQL and on two nodes on one database, next to
#           a SQLite node: one PostgreSQL for the part (tests/support/postgres.lua,
#           initdb as the postgres user, a Unix socket only), stopped after.
#  peer     (BENCH_PEER=1) Twilio's Node MCP server from ../shared/peer,
#           copied to a scratch folder, measured with its own harness against
#           the same nginx, interleaved in each load round.
#
# Knobs (environment):
#  BENCH_QUICK=1           a smoke run of a few minutes (small sizes, 1 round)
#  ROUNDS=3                rounds of every interleaved pair
#  BENCH_DURATION=3 BENCH_WARMUP=1   seconds per load phase
#  BENCH_INFLIGHT="1 16 64"          calls in flight
#  BENCH_HISTORY="0 100000 1000000"  earlier sends in the table
#  BENCH_VERIFY_ROWS=1000000         audit records for verify and the 1M page
#  BENCH_AUDIT_ROWS=10000000         audit records for the last history level
#  BENCH_FILL_SECONDS=480            time budget of the fill from VERIFY_ROWS up to AUDIT_ROWS
#                                    (0: none); the report gives the size reached
#  BENCH_EXEC_TIMEOUT=60             seconds before an executions page is given up
#  BENCH_FLOOR_N=2000                requests in the curl floor
#  BENCH_PEER=0|1  BENCH_PEER_DIR=../shared/peer
#  BENCH_PARTS="load history audit pg"  the parts to run (the report says what is missing)
#  BENCH_PG_INFLIGHT=16                 calls in flight per node in the pg part
#  BENCH_PORT=18480 (the first free port from there)  SB_BIN=./switchboard
set -euo pipefail
umask 077

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SB_BIN=${SB_BIN:-$ROOT/switchboard}
case "$SB_BIN" in /*) ;; *) SB_BIN=$ROOT/$SB_BIN ;; esac

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  : "${ROUNDS:=1}" "${BENCH_DURATION:=1}" "${BENCH_WARMUP:=0.5}" "${BENCH_HISTORY:=0 20000}"
  : "${BENCH_VERIFY_ROWS:=50000}" "${BENCH_AUDIT_ROWS:=100000}" "${BENCH_FLOOR_N:=500}" "${BENCH_EXEC_TIMEOUT:=20}"
fi
ROUNDS=${ROUNDS:-3}
DURATION=${BENCH_DURATION:-3}
WARMUP=${BENCH_WARMUP:-1}
INFLIGHT=${BENCH_INFLIGHT:-"1 16 64"}
HISTORY=${BENCH_HISTORY:-"0 100000 1000000"}
VERIFY_ROWS=${BENCH_VERIFY_ROWS:-1000000}
AUDIT_ROWS=${BENCH_AUDIT_ROWS:-10000000}
EXEC_TIMEOUT=${BENCH_EXEC_TIMEOUT:-60}
FILL_SECONDS=${BENCH_FILL_SECONDS:-480}
FLOOR_N=${BENCH_FLOOR_N:-2000}
PEER=${BENCH_PEER:-0}
# ../shared/peer next to the repository (or next to the main checkout of a git worktree)
PEER_DIR=${BENCH_PEER_DIR:-$ROOT/../shared/peer}
if [ -z "${BENCH_PEER_DIR:-}" ] && [ ! -d "$PEER_DIR" ]; then
  common=$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
  [ -n "$common" ] && [ -d "$(dirname "$common")/../shared/peer" ] && PEER_DIR=$(dirname "$common")/../shared/peer
fi
PORT=${BENCH_PORT:-18480}
PARTS=" ${BENCH_PARTS:-load history audit pg} "
PG_INFLIGHT=${BENCH_PG_INFLIGHT:-16}
part() { [[ $PARTS == *" $1 "* ]]; }
OUT=$ROOT/var/bench
RES=$OUT/results.jsonl
CMDLINE=${BENCH_COMMAND:-"bench/run.sh"}

AC=AC$(printf 'a%.0s' {1..32})
SK=SK$(printf 'c%.0s' {1..32})
NUMBER=+14155550100

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench [$(date -u +%T)]: $*" >&2; }
[ -x "$SB_BIN" ] || die "no switchboard binary at $SB_BIN (run make)"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx not found (Debian nginx-light; make bench installs it)"
for c in curl sqlite3 sha256sum timeout; do command -v $c >/dev/null || die "$c not found"; done
for n in $VERIFY_ROWS $AUDIT_ROWS $ROUNDS $FLOOR_N $HISTORY; do
  [[ $n =~ ^[0-9]+$ ]] || die "a size or count knob is not a whole number: '$n'"
done
[ "$AUDIT_ROWS" -ge "$VERIFY_ROWS" ] || die "BENCH_AUDIT_ROWS ($AUDIT_ROWS) is below BENCH_VERIFY_ROWS ($VERIFY_ROWS)"

NGINX_PID="" SB_PID="" PROBE_PID="" BRIDGE_PID="" PEER_TMP="" PG_DIR="" SB_PID2=""
cleanup() {
  local rc=$?
  trap - EXIT
  for pid in $PROBE_PID $BRIDGE_PID $SB_PID $SB_PID2 $NGINX_PID; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $PROBE_PID $BRIDGE_PID $SB_PID $SB_PID2 $NGINX_PID; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [ -n "$PEER_TMP" ] && rm -rf "$PEER_TMP"
  [ -n "$PG_DIR" ] && "$SB_BIN" exec tests/support/postgres.lua stop "$PG_DIR" >/dev/null 2>&1
  if [ "$rc" -ne 0 ]; then
    echo "bench: failed (exit $rc); logs in $OUT" >&2
    for f in "$OUT"/*/serve.log "$OUT/nginx/error.log"; do
      [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -n 10 "$f" >&2; }
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$OUT"
mkdir -p "$OUT/nginx/tmp"
chmod 700 "$OUT"
: >"$RES"
T_BEGIN=$(date +%s)
LOAD_BEGIN=$(cut -d' ' -f1-3 /proc/loadavg)
now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.3f", (b - a) / 1e6 }'; }
kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat"; }
jstr() { lua5.4 -e 'io.write((require("cjson").encode((io.read("a"):gsub("\n+$", "")))))'; }
emit() { echo "$1" >>"$RES"; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 50); do port_free "$PORT" && break; PORT=$((PORT + 1)); done
port_free "$PORT" || die "no free port near $PORT"
UP=http://127.0.0.1:$PORT
GET_URL="$UP/2010-04-01/Accounts/$AC/Messages.json?PageSize=20"

# --- nginx: the Twilio stand-in ----------------------------------------------
"$SB_BIN" exec bench/upstream.lua "$OUT/nginx" "$PORT" "$AC" "$NUMBER" "$([ "$(id -u)" = 0 ] && echo 1 || echo 0)" >&2
"$NGINX" -t -q -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" || die "nginx config test failed"
"$NGINX" -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" &
NGINX_PID=$!
for _ in $(seq 50); do
  curl -sf -o /dev/null --max-time 1 "$GET_URL" && break
  kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited at start"
  sleep 0.1
done
curl -sf -o /dev/null --max-time 1 "$GET_URL" || die "nginx does not serve $GET_URL"

# --- Switchboard states --------------------------------------------------------
# One state = a directory with its config, data, master key and sockets.
write_conf() { # DIR
  cat >"$1/switchboard.conf.lua" <<EOF
-- generated by bench/run.sh
return {
  data_dir = "$1/data",
  agent_socket = "$1/agent.sock",
  admin_socket = "$1/admin.sock",
  master_key_file = "$1/master.key",
  log = { level = "warn", file = "$1/serve.log" },
  limits = { connections = 512, calls_per_connection = 256 },
  -- a load test sends to the same 10,000 recipients all day
  policy_settings = { recipients = { per_recipient = 1000000000, daily_budget = 1000000000 } },
}
EOF
}
[ ${#OUT} -lt 80 ] || die "$OUT is too long a path for the Unix sockets under it"
start_serve() { # DIR
  local d=$1
  "$SB_BIN" serve --config "$d/switchboard.conf.lua" >>"$d/serve.out" 2>&1 &
  SB_PID=$!
  for _ in $(seq 600); do
    [ -S "$d/agent.sock" ] && [ -S "$d/admin.sock" ] && return 0
    kill -0 "$SB_PID" 2>/dev/null || { cat "$d/serve.out" >&2; die "switchboard serve exited at start ($d)"; }
    sleep 0.05
  done
  die "switchboard serve did not open its sockets in 30 s ($d)"
}
stop_serve() {
  [ -n "$SB_PID" ] || return 0
  kill -TERM "$SB_PID" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$SB_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SB_PID" 2>/dev/null || true
  wait "$SB_PID" 2>/dev/null || true
  SB_PID=""
}
admin() { "$SB_BIN" admin --config "$STATE/switchboard.conf.lua" "$@"; }
fresh() { # NAME: a copy of the set-up state E0
  rm -rf "${OUT:?}/$1"
  cp -a "$OUT/E0" "$OUT/$1"
  rm -f "$OUT/$1"/*.sock "$OUT/$1"/serve.*
  write_conf "$OUT/$1"
}

say "setting up a state: tenant bench connected to $UP, 3 other tenants"
STATE=$OUT/E0
mkdir -p "$STATE/data"
write_conf "$STATE"
start_serve "$STATE"
sleep 1
IDLE_RSS_KIB=$(kib "$SB_PID" VmRSS)
for t in bench other1 other2 other3; do
  admin tenant add "$t" >/dev/null
  admin tenant features "$t" +custom.twilio >/dev/null
  admin --json agent add --tenant "$t" --name b --type caioo --tier owner --groups "Twilio Communications" \
    >"$STATE/agent-$t.json"
done
echo "benchSecretValue0123456789" | admin twilio connect --tenant bench --account-sid "$AC" --api-key-sid "$SK" \
  --hosts "$UP" >"$STATE/connect.txt" || { cat "$STATE/connect.txt" >&2; die "twilio connect failed"; }
admin twilio autonomous-sends on --tenant bench --confirm >/dev/null 2>&1 || die "autonomous-sends on failed"
TOKEN=$(lua5.4 -e 'io.write(require("cjson").decode(io.read("a")).token)' <"$STATE/agent-bench.json")
[ -n "$TOKEN" ] || die "no token in admin agent add --json"
sleep 1
IDLE_RSS2_KIB=$(kib "$SB_PID" VmRSS)
stop_serve
emit "{\"kind\":\"idle\",\"rss_start_kib\":$IDLE_RSS_KIB,\"rss_setup_kib\":$IDLE_RSS2_KIB}"

# load DIR VIA TOOL C LABEL... -> one line of results
LOADN=0
run_load() { # via tool inflight kind round [extra json]
  local via=$1 tool=$2 c=$3 kind=$4 round=$5 extra=${6:-}
  local out=$OUT/load-$((LOADN += 1)).json rc=0
  local common=(--tool "$tool" --inflight "$c" --warmup "$WARMUP" --duration "$DURATION" --out "$out"
                --to-offset $((LOADN * 997)) --clk-tck "$(getconf CLK_TCK)")
  if [ "$via" = direct ]; then
    "$SB_BIN" exec bench/load.lua --socket "$STATE/agent.sock" --token "$TOKEN" --pids "serve=$SB_PID" \
      "${common[@]}" || rc=$?
  else
    local fi=$OUT/to-bridge fo=$OUT/from-bridge
    rm -f "$fi" "$fo"; mkfifo "$fi" "$fo"
    SWITCHBOARD_TOKEN=$TOKEN "$SB_BIN" connect --socket "$STATE/agent.sock" <"$fi" >"$fo" 2>>"$OUT/bridge.err" &
    BRIDGE_PID=$!
    "$SB_BIN" exec bench/load.lua --stdio --pids "serve=$SB_PID,bridge=$BRIDGE_PID" "${common[@]}" >"$fi" <"$fo" || rc=$?
    wait "$BRIDGE_PID" 2>/dev/null || true
    BRIDGE_PID=""
    rm -f "$fi" "$fo"
  fi
  kill -0 "$SB_PID" 2>/dev/null || die "switchboard serve died during $via $tool C=$c"
  [ -s "$out" ] || { emit "{\"kind\":\"$kind\",\"round\":$round,\"failed\":true,\"via\":\"$via\",\"tool\":\"$tool\",\"inflight\":$c$extra}"; return 0; }
  emit "{\"kind\":\"$kind\",\"round\":$round,\"rc\":$rc$extra,\"r\":$(cat "$out")}"
}

floor() { # round
  local cfg=$OUT/curl.cfg t0 i
  : >"$cfg"
  for ((i = 0; i < 100 + FLOOR_N; i++)); do printf 'url = "%s"\noutput = "/dev/null"\n' "$GET_URL" >>"$cfg"; done
  t0=$(now_ns)
  curl -s -K "$cfg" -w '%{time_total} %{num_connects} %{http_code}\n' >"$OUT/curl-times.txt"
  local wall_ms; wall_ms=$(ms_since "$t0")
  tail -n +101 "$OUT/curl-times.txt" | sort -n | awk -v r="$1" -v wall="$wall_ms" -v n=$((100 + FLOOR_N)) '
    { t[NR] = $1; c += $2; if ($3 != 200) bad++ }
    END { i50 = int(NR * 0.50 + 0.999); i99 = int(NR * 0.99 + 0.999);
          printf "{\"kind\":\"floor\",\"round\":%d,\"n\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f,\"connects\":%d,\"bad\":%d,\"wall_us_per_request\":%.1f}\n",
                 r, NR, t[i50] * 1e6, t[i99] * 1e6, c, bad + 0, wall * 1000 / n }' >>"$RES"
}

# --- the peer (optional) -------------------------------------------------------------
PEERW=""
if [ "$PEER" = 1 ]; then
  [ -d "$PEER_DIR" ] || die "BENCH_PEER=1 but there is no $PEER_DIR"
  command -v node >/dev/null && command -v npm >/dev/null || die "BENCH_PEER=1 needs node and npm"
  PEER_TMP=$(mktemp -d /tmp/sb-bench-peer.XXXXXX)
  cp -r "$PEER_DIR" "$PEER_TMP/peer"
  PEERW=$PEER_TMP/peer
  rm -rf "$PEERW/sbs" "$PEERW/results" "$PEERW/node_modules"
  # the harness's recipients (+1555867…) are not valid numbers for today's
  # recipient checks: the scratch copy sends to +1415867… like bench/load.lua
  sed -i "s/'+1555867'/'+1415867'/" "$PEERW/sb-bench.mjs"
  say "peer: npm install in $PEERW"
  (cd "$PEERW" && npm install --no-audit --no-fund --loglevel=error >"$OUT/peer-npm.log" 2>&1) \
    || { tail "$OUT/peer-npm.log" >&2; die "npm install of the peer harness failed"; }
  mkdir -p "$PEERW/sbs/results"
fi
peer_env() { # state dir -> SB_ENV json for the peer harness's `sb` target
  printf '{"bin":"%s","conf":"%s","sock":"%s","token":"%s","token_slow":"%s"}' \
    "$SB_BIN" "$OUT/$1/switchboard.conf.lua" "$OUT/$1/agent.sock" "$TOKEN" "$TOKEN" >"$OUT/$1/peer-env.json"
}
peer_round() { # round
  local r=$1 p=(env UPSTREAM_PORT="$PORT" WARM_MS=1000 SEQ_MS=$(awk -v d="$DURATION" 'BEGIN { print d * 1000 }')
                   DUR_MS=$(awk -v d="$DURATION" 'BEGIN { print d * 1000 }') STARTS=1 C_LIST=16)
  local via=direct,bridge; [ $((r % 2)) = 0 ] && via=bridge,direct
  say "round $r: peer read, write; Switchboard with the same client"
  (cd "$PEERW" && "${p[@]}" MODE=read node sb-bench.mjs peer "r$r" >/dev/null 2>>"$OUT/peer.log") || die "peer read failed (see $OUT/peer.log)"
  fresh P; peer_env P
  (cd "$PEERW" && "${p[@]}" MODE=read SB_ENV="$OUT/P/peer-env.json" SB_VIA=$via node sb-bench.mjs sb "r$r" >/dev/null 2>>"$OUT/peer.log") \
    || die "Switchboard read through the peer harness failed (see $OUT/peer.log)"
  (cd "$PEERW" && "${p[@]}" MODE=write node sb-bench.mjs peer "r$r" >/dev/null 2>>"$OUT/peer.log") || die "peer write failed (see $OUT/peer.log)"
  for v in direct bridge; do
    fresh P; peer_env P
    (cd "$PEERW" && "${p[@]}" MODE=write SB_ENV="$OUT/P/peer-env.json" SB_VIA=$v node sb-bench.mjs sb "r$r-$v" >/dev/null 2>>"$OUT/peer.log") \
      || die "Switchboard write through the peer harness failed (see $OUT/peer.log)"
  done
  for f in "read-peer-r$r" "read-sb-r$r" "write-peer-r$r" "write-sb-r$r-direct" "write-sb-r$r-bridge"; do
    emit "{\"kind\":\"peer\",\"round\":$r,\"file\":\"$f\",\"r\":$(tr -d '\n' <"$PEERW/sbs/results/$f.json")}"
  done
}

# --- load rounds ----------------------------------------------------------------
part load && for r in $(seq "$ROUNDS"); do
  say "round $r/$ROUNDS: floor (curl, $FLOOR_N GETs on one connection); load $(cut -d' ' -f1-3 /proc/loadavg)"
  floor "$r"
  [ "$PEER" = 1 ] && peer_round "$r"
  vias="direct bridge"; [ $((r % 2)) = 0 ] && vias="bridge direct"
  for tool in read write; do
    for via in $vias; do
      # a fresh state for each group: sends accumulate, and the call path
      # may depend on how many there are (the history part measures that)
      fresh E; STATE=$OUT/E; start_serve "$STATE"
      for c in $INFLIGHT; do
        say "round $r: $tool $via C=$c"
        run_load "$via" "$tool" "$c" load "$r"
      done
      emit "{\"kind\":\"serve_hwm\",\"round\":$r,\"via\":\"$via\",\"tool\":\"$tool\",\"hwm_kib\":$(kib "$SB_PID" VmHWM)}"
      stop_serve
    done
  done
done

# --- history: earlier sends, then many audit records ------------------------------------
# H grows; each round measures a fresh empty state E and H, in alternating order.
fresh H
BENCH_TID=$(sqlite3 "$OUT/H/data/switchboard.db" "SELECT id FROM tenants WHERE name = 'bench'")
# the other tenants' ids, as a CASE over pick % their number
OTHER_CASE=$(sqlite3 "$OUT/H/data/switchboard.db" "SELECT 'CASE pick % ' || count(*) || group_concat(' WHEN ' || (n - 1) || ' THEN ' || id, '') || ' END'
  FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM tenants WHERE id <> $BENCH_TID)")
SENDS_NOW=0
add_sends() { # K: total earlier sends in H's table
  local k=$1 add=$(($1 - SENDS_NOW)) t0
  [ "$add" -gt 0 ] || return 0
  t0=$(now_ns)
  # 70% the benchmark's tenant, the rest over the other tenants; 10,000
  # recipients; dates over the last 60 days; 1 in 20 failed
  sqlite3 "$OUT/H/data/switchboard.db" "
    BEGIN;
    WITH RECURSIVE c(i) AS (SELECT $SENDS_NOW + 1 UNION ALL SELECT i + 1 FROM c WHERE i < $k),
    r AS (SELECT i, abs(random()) % 100 AS pick, (i * 7919) % 10000 AS rcpt,
                 CAST(strftime('%s', 'now') AS INTEGER) - abs(random()) % (60 * 86400) AS at FROM c)
    INSERT INTO sends (tenant_id, agent_id, tool, recipient, request, body_hash, status, sid, created_at,
                       created_unix, updated_at)
    SELECT CASE WHEN pick < 70 THEN $BENCH_TID ELSE $OTHER_CASE END,
           NULL, 'twilio_send_sms', '+1415867' || printf('%04d', rcpt), randomblob(320), lower(hex(randomblob(32))),
           CASE WHEN pick % 20 = 7 THEN 'failed' ELSE 'sent' END, 'SM' || lower(hex(randomblob(16))),
           strftime('%Y-%m-%dT%H:%M:%SZ', at, 'unixepoch'), at, strftime('%Y-%m-%dT%H:%M:%SZ', at, 'unixepoch')
    FROM r;
    COMMIT;" || die "inserting $add sends with sqlite3 failed"
  SENDS_NOW=$k
  say "history: $k earlier sends in the table (+$add in $(ms_since "$t0") ms)"
}
AUDIT_NOW=0
add_audit() { # N [SECONDS]: total call records written by the fill, its time budget
  local n=$1 add=$(($1 - AUDIT_NOW)) t0 done_n
  [ "$add" -gt 0 ] || return 0
  t0=$(now_ns)
  "$SB_BIN" exec bench/fill.lua "$ROOT" "$OUT/H/switchboard.conf.lua" "$add" 30 "${2:-0}" >"$OUT/fill.out" \
    || die "bench/fill.lua failed"
  cat "$OUT/fill.out" >&2
  done_n=$(awk '/^fill: / { print $2 }' "$OUT/fill.out")
  [[ $done_n =~ ^[0-9]+$ ]] || die "bench/fill.lua did not say how many records it wrote"
  AUDIT_NOW=$((AUDIT_NOW + done_n))
  emit "{\"kind\":\"fill\",\"records\":$done_n,\"asked\":$add,\"budget_s\":${2:-0},\"total\":$AUDIT_NOW,\"ms\":$(ms_since "$t0"),\"db_bytes\":$(stat -c %s "$OUT/H/data/switchboard.db")}"
  say "audit: $AUDIT_NOW records written by the runtime's writer (+$done_n in $(ms_since "$t0") ms)"
}
history_level() { # label sends audit
  local label=$1 r order st
  for r in $(seq "$ROUNDS"); do
    order="E H"; [ $((r % 2)) = 0 ] && order="H E"
    for st in $order; do
      [ "$st" = E ] && fresh E
      STATE=$OUT/$st; start_serve "$STATE"
      say "history $label round $r: $st"
      for tool in read write; do
        run_load direct "$tool" 16 history "$r" ",\"level\":\"$label\",\"state\":\"$st\",\"sends\":$2,\"audit\":$3"
      done
      stop_serve
    done
  done
}
part history && for k in $HISTORY; do
  add_sends "$k"
  history_level "sends=$k" "$k" 0
done

# --- audit verify and executions pages --------------------------------------------------
probe_start() { # file
  "$SB_BIN" exec bench/probe.lua --socket "$STATE/agent.sock" --token "$TOKEN" --out "$1" --duration 900 &
  PROBE_PID=$!
  sleep 0.5
}
probe_stop() {
  sleep 0.2
  kill -TERM "$PROBE_PID" 2>/dev/null || true
  wait "$PROBE_PID" 2>/dev/null || true
  PROBE_PID=""
}
verify_once() { # label round [verify options...]
  local label=$1 round=$2; shift 2
  local out=$OUT/verify.out err=$OUT/verify.err pf=$OUT/probe.json rc=0 t0 c0 ms hwm_reset=true
  echo 5 >"/proc/$SB_PID/clear_refs" 2>/dev/null || hwm_reset=false   # peak RSS from now
  local rss0; rss0=$(kib "$SB_PID" VmRSS)
  probe_start "$pf"
  c0=$(cpu_s "$SB_PID"); kill -USR1 "$PROBE_PID"; t0=$(now_ns)
  timeout 600 "$SB_BIN" admin --config "$STATE/switchboard.conf.lua" audit verify "$@" >"$out" 2>"$err" || rc=$?
  ms=$(ms_since "$t0"); kill -USR1 "$PROBE_PID"
  local cpu; cpu=$(awk -v a="$c0" -v b="$(cpu_s "$SB_PID")" 'BEGIN { printf "%.2f", b - a }')
  probe_stop
  emit "{\"kind\":\"verify\",\"label\":\"$label\",\"round\":$round,\"args\":$(printf '%s' "$*" | jstr),\"rc\":$rc,\"ms\":$ms,\"serve_cpu_s\":$cpu,\"records\":$AUDIT_NOW,\"rss_before_kib\":$rss0,\"hwm_kib\":$(kib "$SB_PID" VmHWM),\"hwm_reset\":$hwm_reset,\"out\":$(head -c 300 "$out" | jstr),\"err\":$(head -c 300 "$err" | jstr),\"probe\":$(cat "$pf" 2>/dev/null || echo null)}"
}
verify_floor() { # round
  local t0; t0=$(now_ns)
  sqlite3 -readonly "$OUT/H/data/switchboard.db" "SELECT * FROM audit_log ORDER BY id" | sha256sum >/dev/null
  emit "{\"kind\":\"verify_floor\",\"round\":$1,\"ms\":$(ms_since "$t0"),\"records\":$AUDIT_NOW}"
}
executions_page() { # label
  local out=$OUT/exec.out err=$OUT/exec.err pf=$OUT/probe.json rc=0 t0 ms
  probe_start "$pf"
  kill -USR1 "$PROBE_PID"; t0=$(now_ns)
  timeout "$EXEC_TIMEOUT" "$SB_BIN" admin --config "$STATE/switchboard.conf.lua" --json executions --tenant bench \
    >"$out" 2>"$err" || rc=$?
  ms=$(ms_since "$t0"); kill -USR1 "$PROBE_PID"
  probe_stop
  emit "{\"kind\":\"executions\",\"label\":\"$1\",\"records\":$AUDIT_NOW,\"rc\":$rc,\"timeout_s\":$EXEC_TIMEOUT,\"ms\":$ms,\"bytes\":$(stat -c %s "$out"),\"hwm_kib\":$(kib "$SB_PID" VmHWM),\"err\":$(head -c 300 "$err" | jstr),\"probe\":$(cat "$pf" 2>/dev/null || echo null)}"
  if [ "$rc" != 0 ]; then
    # a server still building the answer stalls everything after it: start again
    say "executions: exit $rc after $ms ms; restarting the server"
    stop_serve; start_serve "$STATE"
  fi
}

if part audit || part history; then
add_audit "$VERIFY_ROWS"
fi
# `audit verify` may learn to start from a verified checkpoint; the rounds
# that measure a full walk ask for one when the CLI's usage offers --full.
VERIFY_FULL=()
if [ -n "${BENCH_VERIFY_FULL_ARGS+x}" ]; then
  read -r -a VERIFY_FULL <<<"$BENCH_VERIFY_FULL_ARGS"
elif "$SB_BIN" admin audit verify --help 2>&1 | grep -q -- '--full'; then
  VERIFY_FULL=(--full)
fi
if part audit; then
STATE=$OUT/H; start_serve "$STATE"
sleep 1
emit "{\"kind\":\"idle_history\",\"records\":$AUDIT_NOW,\"sends\":$SENDS_NOW,\"rss_kib\":$(kib "$SB_PID" VmRSS)}"
for r in $(seq "$ROUNDS"); do
  say "audit verify of $AUDIT_NOW records, round $r (and the sqlite3 | sha256sum floor)"
  if [ $((r % 2)) = 1 ]; then
    verify_once full "$r" "${VERIFY_FULL[@]}"; verify_floor "$r"
  else
    verify_floor "$r"; verify_once full "$r" "${VERIFY_FULL[@]}"
  fi
done
say "1,000 new call records, then audit verify again"
"$SB_BIN" exec bench/load.lua --socket "$STATE/agent.sock" --token "$TOKEN" --tool read --inflight 8 --warmup 0 \
  --duration 600 --calls 1000 --out "$OUT/load-1000.json" >/dev/null 2>&1 || true
sleep 0.5
verify_once after_1000 1
say "executions page at $AUDIT_NOW records (timeout ${EXEC_TIMEOUT}s)"
executions_page "at_verify_rows"
stop_serve

if [ "$AUDIT_ROWS" -gt "$VERIFY_ROWS" ]; then
  add_audit "$AUDIT_ROWS" "$FILL_SECONDS"
  STATE=$OUT/H; start_serve "$STATE"
  say "executions page at $AUDIT_NOW records (timeout ${EXEC_TIMEOUT}s)"
  executions_page "at_audit_rows"
  stop_serve
fi
fi
part history && ! part audit && [ "$AUDIT_ROWS" -gt "$AUDIT_NOW" ] && add_audit "$AUDIT_ROWS" "$FILL_SECONDS"
part history && history_level "sends=$SENDS_NOW+audit=$AUDIT_NOW" "$SENDS_NOW" "$AUDIT_NOW"

# --- PostgreSQL: one node, two nodes on one database, next to a SQLite node --------------
if part pg; then
  say "PostgreSQL: read and write calls/s on one node and on two nodes on one database, next to SQLite"
  PG_DIR=$("$SB_BIN" exec tests/support/postgres.lua start 2>"$OUT/pg-start.log") \
    || { cat "$OUT/pg-start.log" >&2; die "PostgreSQL did not start"; }
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  PGPASSFILE=/dev/null PGPASSWORD=$(head -n 1 "$PG_DIR/client.pw") "$PG_BIN/psql" -X -q -h "$PG_DIR" -U sb -d sb \
    -c "CREATE DATABASE bench" >/dev/null || die "CREATE DATABASE bench failed"
  pg_conf() { # DIR [MASTER_KEY_FILE]
    write_conf "$1"
    local extra="store = { host = \"$PG_DIR\", dbname = \"bench\", user = \"sb\", password_file = \"$PG_DIR/client.pw\" },"
    sed -i "s|^return {|return {\n  $extra|" "$1/switchboard.conf.lua"
    if [ -n "${2:-}" ]; then
      sed -i "s|master_key_file = \"$1/master.key\",|master_key_file = \"$2\", create_master_key = false,|" \
        "$1/switchboard.conf.lua"
    fi
  }
  # load on NODES (state dirs) at once, one bench/load.lua each: the sum of calls/s
  pg_load() { # setup tool round DIR...
    local setup=$1 tool=$2 round=$3; shift 3
    local outs=() pids=() d n=0
    for d in "$@"; do
      n=$((n + 1))
      "$SB_BIN" exec bench/load.lua --socket "$d/agent.sock" --token "$TOKEN" --tool "$tool" --inflight "$PG_INFLIGHT" \
        --warmup "$WARMUP" --duration "$DURATION" --to-offset $(( (LOADN += 1) * 997 )) --out "$OUT/pg-$setup-$tool-$round-$n.json" &
      pids+=($!); outs+=("$OUT/pg-$setup-$tool-$round-$n.json")
    done
    local rc=0 p
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    local parts="" o
    for o in "${outs[@]}"; do [ -s "$o" ] && parts="$parts${parts:+,}$(cat "$o")"; done
    emit "{\"kind\":\"pg\",\"setup\":\"$setup\",\"tool\":\"$tool\",\"round\":$round,\"nodes\":$n,\"rc\":$rc,\"r\":[$parts]}"
  }
  # the PostgreSQL state: tenant bench connected, as E0
  STATE=$OUT/P1; mkdir -p "$STATE/data"; pg_conf "$STATE"
  start_serve "$STATE"
  for t in bench other1 other2 other3; do
    admin tenant add "$t" >/dev/null
    admin tenant features "$t" +custom.twilio >/dev/null
    admin --json agent add --tenant "$t" --name b --type caioo --tier owner --groups "Twilio Communications" \
      >"$STATE/agent-$t.json"
  done
  echo "benchSecretValue0123456789" | admin twilio connect --tenant bench --account-sid "$AC" --api-key-sid "$SK" \
    --hosts "$UP" >"$STATE/connect.txt" || { cat "$STATE/connect.txt" >&2; die "twilio connect failed (PostgreSQL)"; }
  admin twilio autonomous-sends on --tenant bench --confirm >/dev/null 2>&1 || die "autonomous-sends on failed"
  E0_TOKEN=$TOKEN
  TOKEN=$(lua5.4 -e 'io.write(require("cjson").decode(io.read("a")).token)' <"$STATE/agent-bench.json")
  stop_serve
  mkdir -p "$OUT/P2/data"; pg_conf "$OUT/P2" "$OUT/P1/master.key"
  for r in $(seq "$ROUNDS"); do
    for tool in read write; do
      TOKEN_PG=$TOKEN; TOKEN=$E0_TOKEN
      fresh "Q$r$tool"; STATE=$OUT/Q$r$tool; start_serve "$STATE"
      pg_load sqlite1 "$tool" "$r" "$STATE"; stop_serve
      TOKEN=$TOKEN_PG
      STATE=$OUT/P1; start_serve "$STATE"
      pg_load pg1 "$tool" "$r" "$OUT/P1"
      SB_PID1=$SB_PID; STATE=$OUT/P2; start_serve "$STATE"; SB_PID2=$SB_PID
      pg_load pg2 "$tool" "$r" "$OUT/P1" "$OUT/P2"
      stop_serve; SB_PID2=""; SB_PID=$SB_PID1; stop_serve
    done
  done
  TOKEN=$E0_TOKEN
  "$SB_BIN" exec tests/support/postgres.lua stop "$PG_DIR" >/dev/null 2>&1; PG_DIR=""
fi

# --- report --------------------------------------------------------------------------
T_END=$(date +%s)
model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
  echo "{\"kind\":\"meta\",\"date\":$(date -u '+%Y-%m-%d %H:%M UTC' | jstr),\"commit\":$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null | jstr),"
  echo "\"dirty\":$([ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo true || echo false),"
  echo "\"cpus\":$(nproc),\"model\":$(printf '%s' "${model:-unknown}" | jstr),\"kernel\":$(uname -r | jstr),"
  echo "\"nginx\":$("$NGINX" -v 2>&1 | sed 's/^nginx version: //' | jstr),\"curl\":$(curl --version | head -n 1 | cut -d' ' -f1-2 | jstr),"
  echo "\"node\":$( (node -v 2>/dev/null || echo -) | jstr),\"peer\":$PEER,\"parts\":$(printf '%s' "$PARTS" | jstr),\"command\":$(printf '%s' "$CMDLINE" | jstr),"
  echo "\"knobs\":$(printf 'ROUNDS=%s BENCH_DURATION=%s BENCH_WARMUP=%s BENCH_INFLIGHT="%s" BENCH_HISTORY="%s" BENCH_VERIFY_ROWS=%s BENCH_AUDIT_ROWS=%s BENCH_FILL_SECONDS=%s BENCH_EXEC_TIMEOUT=%s BENCH_FLOOR_N=%s BENCH_PEER=%s' \
     "$ROUNDS" "$DURATION" "$WARMUP" "$INFLIGHT" "$HISTORY" "$VERIFY_ROWS" "$AUDIT_ROWS" "$FILL_SECONDS" "$EXEC_TIMEOUT" "$FLOOR_N" "$PEER" | jstr),"
  echo "\"load_begin\":$(printf '%s' "$LOAD_BEGIN" | jstr),\"load_end\":$(cut -d' ' -f1-3 /proc/loadavg | jstr),\"seconds\":$((T_END - T_BEGIN))}"
} | tr -d '\n' >>"$RES"
echo >>"$RES"
"$SB_BIN" exec bench/report.lua "$RES" "$ROOT/BENCHMARKS.md"
