#!/usr/bin/env bash
# The whole test suite: luacheck, busted specs (run inside the switchboard
# binary, so the core modules are the real ones), the official MCP SDK
# client, and, under `make asan`, a scan for sanitizer reports.
# Ends with one line: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
export SB_BIN=${SB_BIN:-$ROOT/switchboard}
export SB_ROOT=$ROOT
export SB_TEST_TMP=$(mktemp -d /tmp/sbtest.XXXXXX)
export SWITCHBOARD_DUMPABLE=1
# every tool result in the suite is checked against its outputSchema (pipeline.lua)
export SWITCHBOARD_CHECK_RESULTS=1
pass=0
fail=0
note() { printf '\n== %s\n' "$*"; }

note "luacheck"
if luacheck -q --no-color runtime.lua lua integrations policies examples tests bench fuzz; then
  pass=$((pass + 1)); echo "ok - luacheck"
else
  fail=$((fail + 1)); echo "not ok - luacheck"
fi

# SB_STORE selects the store of the integration specs: sqlite, pg, or
# (unset) both: every spec on SQLite, then the integration specs again on
# one PostgreSQL started for the run (tests/support/postgres.lua), each
# server on a database of its own. A spec that inspects the SQLite file
# itself says so on a line "-- store: sqlite only" and is not run on pg.
stores=${SB_STORE:-"sqlite pg"}
pkg_specs=$(ls -d integrations/*/tests examples/integrations/*/tests 2>/dev/null | tr '\n' ' ')
for store in $stores; do
  if [ "$store" = sqlite ]; then
    note "busted (inside $SB_BIN)"
    # the core's specs, then each integration package's own (integrations/*/tests,
    # examples/integrations/*/tests)
    specs=${SB_SPECS:-"tests/unit tests/integration $pkg_specs"}
  else
    note "busted on PostgreSQL (SB_STORE=pg)"
    if [ -n "${SB_SPECS:-}" ]; then
      # of the given specs, the integration ones (the others do not depend on the store)
      specs=""
      for s in $SB_SPECS; do case "$s" in tests/integration*) specs="$specs $s" ;; esac; done
      [ -n "$specs" ] || continue
    else
      specs=$(grep -L '^-- store: sqlite only' tests/integration/*_spec.lua | tr '\n' ' ')
    fi
    if ! SB_PG_DIR=$("$SB_BIN" exec tests/support/postgres.lua start 2>"$SB_TEST_TMP/pg-start.log"); then
      fail=$((fail + 1)); echo "not ok - PostgreSQL for the run did not start"; cat "$SB_TEST_TMP/pg-start.log"
      continue
    fi
    export SB_PG_DIR
  fi
  SB_STORE=$store "$SB_BIN" exec /usr/bin/busted --lpath="$ROOT/tests/?.lua" -o TAP $specs 2>&1 \
    | tee "$SB_TEST_TMP/busted-$store.tap"
  if [ "$store" = pg ]; then
    "$SB_BIN" exec tests/support/postgres.lua stop "$SB_PG_DIR" >/dev/null 2>&1
    unset SB_PG_DIR
  fi
  ok=$(grep -c '^ok ' "$SB_TEST_TMP/busted-$store.tap")
  nok=$(grep -c '^not ok ' "$SB_TEST_TMP/busted-$store.tap")
  if [ "$ok" -eq 0 ] && [ "$nok" -eq 0 ]; then nok=1; echo "not ok - busted ($store) ran no test"; fi
  pass=$((pass + ok)); fail=$((fail + nok))
done

note "fuzz corpus replay (fuzz/corpus/<target>/ through fuzz/targets/<target>.lua)"
if [ -z "${SB_SKIP_FUZZ:-}" ]; then
  out=$(SB_FUZZ_TOLERATE= SWITCHBOARD_HOME=$ROOT "$SB_BIN" exec fuzz/replay.lua 2>&1 | tee "$SB_TEST_TMP/fuzz-replay.log")
  echo "$out"
  ok=$(printf '%s\n' "$out" | grep -c '^ok ')
  nok=$(printf '%s\n' "$out" | grep -c '^not ok ')
  if [ "$ok" -eq 0 ] && [ "$nok" -eq 0 ]; then nok=1; echo "not ok - fuzz corpus replay did not run"; fi
  pass=$((pass + ok)); fail=$((fail + nok))
fi

note "MCP TypeScript SDK client (node --test)"
if [ -z "${SB_SKIP_NODE:-}" ]; then
  out=$("$SB_BIN" exec tests/support/node_harness.lua 2>&1)
  echo "$out"
  ok=$(printf '%s\n' "$out" | grep -c '^ok ')
  nok=$(printf '%s\n' "$out" | grep -c '^not ok ')
  if [ "$ok" -eq 0 ] && [ "$nok" -eq 0 ]; then nok=1; echo "not ok - node tests did not run"; fi
  pass=$((pass + ok)); fail=$((fail + nok))
fi

if [ -z "${SB_ASAN:-}" ] && [ -z "${SB_SKIP_VALGRIND:-}" ] && command -v valgrind >/dev/null; then
  note "valgrind"
  out=$("$SB_BIN" exec tests/support/valgrind_serve.lua 2>&1)
  echo "$out"
  ok=$(printf "%s\n" "$out" | grep -c "^ok ")
  nok=$(printf "%s\n" "$out" | grep -c "^not ok ")
  [ "$ok" -eq 0 ] && [ "$nok" -eq 0 ] && nok=1
  pass=$((pass + ok)); fail=$((fail + nok))
fi

# On CI (a machine of its own, as root): the package `make test` built
# installs with dpkg -i, its binary answers --version, and it is removed.
if [ "${CI:-}" = true ] && [ -z "${SB_ASAN:-}" ] && [ "$(id -u)" = 0 ]; then
  note "Debian package install"
  deb=$(ls build/pkg/switchboard_*_"$(dpkg --print-architecture)".deb 2>/dev/null | head -n 1)
  if [ -z "$deb" ]; then
    echo "ok - no package was built (SB_SKIP_PACKAGE): nothing to install"
    pass=$((pass + 1))
  elif dpkg -i "$deb" >"$SB_TEST_TMP/dpkg.log" 2>&1 && /usr/bin/switchboard --version \
       && dpkg -r switchboard >>"$SB_TEST_TMP/dpkg.log" 2>&1; then
    pass=$((pass + 1)); echo "ok - the package installs with dpkg -i, /usr/bin/switchboard --version answers, dpkg -r removes it"
  else
    fail=$((fail + 1)); echo "not ok - the package did not install, answer or remove"; tail -n 20 "$SB_TEST_TMP/dpkg.log"
    dpkg -r switchboard >/dev/null 2>&1
  fi
fi

if [ -n "${SB_ASAN:-}" ]; then
  note "sanitizer reports"
  reports=$(grep -rlE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$SB_TEST_TMP" 2>/dev/null)
  if [ -n "$reports" ]; then
    fail=$((fail + 1)); echo "not ok - sanitizer reports in: $reports"
    for r in $reports; do grep -A30 -E 'ERROR: |runtime error:' "$r" | head -60; done
  else
    pass=$((pass + 1)); echo "ok - no sanitizer report in any server or client log"
  fi
fi

# servers, simulators and upstreams a failed spec left behind
pkill -f "$SB_TEST_TMP" 2>/dev/null
[ -z "${SB_KEEP_TMP:-}" ] && rm -rf "$SB_TEST_TMP"
echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
