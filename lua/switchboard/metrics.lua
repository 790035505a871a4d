-- Counters of the running server in the Prometheus text format (0.0.4),
-- served at /metrics by switchboard.http_server. Calls are counted from
-- the audit records (one per tools/call, whatever its end), so every
-- transport is counted the same way.
local escalations_store = require("switchboard.store.escalations")
local stats = require("switchboard.store.stats")

local M = {}

local BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120 }

local calls = {}        -- "tool\0decision\0outcome" → n
local hist = { counts = {}, sum = 0, n = 0 }
for i = 1, #BUCKETS do hist.counts[i] = 0 end

function M.reset()
  calls = {}
  hist = { counts = {}, sum = 0, n = 0 }
  for i = 1, #BUCKETS do hist.counts[i] = 0 end
end

-- One audit record of a call (tool, decision, outcome, duration_ms).
function M.observe(rec)
  if type(rec) ~= "table" or type(rec.tool) ~= "string" then return end
  if rec.decision == "receipt" then return end -- a delivery receipt, not a call
  local k = table.concat({ rec.tool, tostring(rec.decision or "none"), tostring(rec.outcome or "none") }, "\0")
  calls[k] = (calls[k] or 0) + 1
  local s = (tonumber(rec.duration_ms) or 0) / 1000
  hist.n, hist.sum = hist.n + 1, hist.sum + s
  for i, b in ipairs(BUCKETS) do
    if s <= b then hist.counts[i] = hist.counts[i] + 1 end
  end
end

-- A label value, escaped as the text format says.
local function lv(v)
  return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function num(v)
  if math.type(v) == "integer" then return tostring(v) end
  return ("%.17g"):format(v)
end

-- The text for server (a switchboard.server).
function M.render(server)
  local out = {}
  local function add(...) out[#out + 1] = table.concat({ ... }) end
  add("# HELP switchboard_calls_total tools/call by tool, policy decision and outcome.")
  add("# TYPE switchboard_calls_total counter")
  local keys = {}
  for k in pairs(calls) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local tool, decision, outcome = k:match("^(.-)%z(.-)%z(.*)$")
    add('switchboard_calls_total{tool="', lv(tool), '",decision="', lv(decision), '",outcome="', lv(outcome),
      '"} ', num(calls[k]))
  end
  add("# HELP switchboard_call_duration_seconds Time from a call's arrival to its audit record.")
  add("# TYPE switchboard_call_duration_seconds histogram")
  for i, b in ipairs(BUCKETS) do
    add('switchboard_call_duration_seconds_bucket{le="', num(b), '"} ', num(hist.counts[i]))
  end
  add('switchboard_call_duration_seconds_bucket{le="+Inf"} ', num(hist.n))
  add("switchboard_call_duration_seconds_sum ", num(hist.sum))
  add("switchboard_call_duration_seconds_count ", num(hist.n))

  -- each integration's own series (its manifest's `metrics` module: render(add, num))
  require("switchboard.integrations").each("metrics", function(_, m) m.render(add, num) end)

  local db = server.db
  local open = escalations_store.count_open(db)
  add("# HELP switchboard_escalations_open Escalations and holds waiting for a person.")
  add("# TYPE switchboard_escalations_open gauge")
  add("switchboard_escalations_open ", num(open or 0))
  add("# HELP switchboard_sends Write-ahead send records by status.")
  add("# TYPE switchboard_sends gauge")
  local by = stats.sends_by_status(db) or {}
  for _, st in ipairs({ "pending", "in_flight", "sent", "failed", "unknown" }) do
    add('switchboard_sends{status="', st, '"} ', num(by[st] or 0))
  end
  add("# HELP switchboard_delivery_receipts_total Status callbacks: applied, ignored (replays,"
    .. " not a step forward) and refused (bad token or fields).")
  add("# TYPE switchboard_delivery_receipts_total counter")
  local sends_mod = require("switchboard.sends")
  for _, k in ipairs({ "applied", "duplicate", "refused" }) do
    add('switchboard_delivery_receipts_total{result="', k, '"} ', num(sends_mod.receipt_counts[k]))
  end
  add("# HELP switchboard_delivered_ratio Of a tenant's messages with a final delivery receipt, the share"
    .. " delivered (or read).")
  add("# TYPE switchboard_delivered_ratio gauge")
  local ratio = stats.delivery_by_tenant(db) or {}
  for _, r in ipairs(ratio) do
    add('switchboard_delivered_ratio{tenant="', lv(r.tenant), '"} ', num(r.ok / r.n))
  end
  add("# HELP switchboard_connections Open MCP connections and HTTP sessions.")
  add("# TYPE switchboard_connections gauge")
  local sock, web = 0, 0
  for s in pairs(server.sessions) do
    if s.http then web = web + 1 else sock = sock + 1 end
  end
  add('switchboard_connections{transport="socket"} ', num(sock))
  add('switchboard_connections{transport="http"} ', num(web))
  add("# HELP switchboard_calls_in_flight tools/call running now.")
  add("# TYPE switchboard_calls_in_flight gauge")
  add("switchboard_calls_in_flight ", num(server.inflight or 0))
  return table.concat(out, "\n") .. "\n"
end

return M
