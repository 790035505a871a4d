-- bench/fill.lua: N more call records in the audit trail of a stopped
-- server, written by the runtime's own audit writer (the server state that
-- `switchboard serve` builds from the same config, so the chain is
-- whatever the runtime writes and `audit verify` walks it).
--   switchboard exec bench/fill.lua ROOT CONFIG N [DAYS=30] [SECONDS]
-- With SECONDS, the fill stops at the first batch boundary after that many
-- seconds (every batch is one committed transaction, so the chain stays
-- whole) and says how many records it wrote: "fill: N call records …".
-- The records are spread over the agents in the database (the first one,
-- the benchmark's, gets half), over the last DAYS days in id order, an
-- execution every 10 calls of an agent; 4 in 5 are searches, 1 in 5 sends.
local config = require("switchboard.config")
local server = require("switchboard.server")
local loop = require("core.loop")

local root, conf, n, days = arg[1], arg[2], math.tointeger(tonumber(arg[3] or "")), tonumber(arg[4] or "30")
local budget = tonumber(arg[5] or "")
local deadline = budget and budget > 0 and os.time() + budget or nil
if not (root and conf and n and days) then
  io.stderr:write("usage: switchboard exec bench/fill.lua ROOT CONFIG N [DAYS]\n")
  return 2
end
local cfg = assert(config.load(conf, root))
local rc = 0
loop.set_error_handler(function(msg) io.stderr:write("fill.lua: ", msg, "\n"); rc = 1; loop.stop() end)

local POLICIES_SEND = { "authorization_tiers", "external_writes", "safety_gateway", "recipients", "autonomous_sends" }
local POLICIES_READ = { "authorization_tiers" }
local POLICIES_SEND_JSON = '["authorization_tiers","external_writes","safety_gateway","recipients","autonomous_sends"]'
local POLICIES_READ_JSON = '["authorization_tiers"]'
local BATCH = 20000

loop.spawn(function()
  local srv = assert(server.start(cfg))
  for _, l in ipairs(srv.listeners) do l:close() end
  -- nothing here yields to the loop: give SIGTERM and SIGINT back their defaults
  for _, sg in ipairs(srv.signals) do sg:close() end
  local agents = assert(srv.db:query("SELECT id, tenant_id FROM agents ORDER BY id"))
  assert(#agents > 0, "fill.lua: no agents in the database")
  local w = srv.audit
  local t_end = os.time()
  local t_start = t_end - math.floor(days * 86400) + 60
  local step = (t_end - t_start) / n
  local c0 = os.clock()
  local per_agent = {}
  local ok, err
  local written = n
  -- The records a serving runtime queues (what record() builds), queued
  -- directly with their time stamps; flush() chains and commits them.
  -- When the writer has no queue of such records, record() is used and
  -- the time stamps are the current time.
  local direct = type(w.queue) == "table"
  local last_t, last_at
  for i = 1, n do
    -- half to the first agent, the rest round-robin over all of them
    local a = (i % 2 == 0) and agents[1] or agents[(i // 2) % #agents + 1]
    local k = (per_agent[a.id] or 0) + 1
    per_agent[a.id] = k
    local t = t_start + math.floor((i - 1) * step)
    local send = i % 5 == 0
    local to = ("+1415867%04d"):format(i * 7919 % 10000)
    if t ~= last_t then last_t, last_at = t, os.date("!%Y-%m-%dT%H:%M:%SZ", t) end
    local rec = {
      at = last_at, kind = "call", tenant_id = a.tenant_id, agent_id = a.id,
      execution_id = ("fill-%d-%d-%d"):format(t_start, a.id, k // 10), sender_tier = "owner",
      tool = send and "twilio_send_sms" or "twilio_search_messages", action = (not send) and "search" or nil,
      decision = "allow", outcome = "ok", retries = 0, duration_ms = send and 1.042 or 0.203,
    }
    if direct then
      rec.params = send and ('{"to":"%s","body":"[30 characters]"}'):format(to) or '{"action":"search","limit":20}'
      rec.policies = send and POLICIES_SEND_JSON or POLICIES_READ_JSON
      rec.detail = send and ('{"send_id":%d,"sid":"SM%032x","status":"queued","outcome":"sent"}'):format(i // 5, i) or nil
      w.queue[#w.queue + 1] = rec
    else
      rec.args = send and { to = to, body = "Your appointment is confirmed." } or { action = "search", limit = 20 }
      rec.policies = send and POLICIES_SEND or POLICIES_READ
      rec.detail = send and { send_id = i // 5, sid = ("SM%032x"):format(i), status = "queued", outcome = "sent" } or nil
      w:record(rec)
    end
    if i % BATCH == 0 then
      ok, err = w:flush()
      if not ok then error("fill.lua: audit flush: " .. tostring(err)) end
      if deadline and os.time() >= deadline and i < n then
        written = i
        io.stderr:write(("fill.lua: stopped at the %d s budget after %d of %d records\n"):format(budget, i, n))
        break
      end
    end
  end
  ok, err = w:flush()
  if not ok then error("fill.lua: audit flush: " .. tostring(err)) end
  local r = srv.db:row("SELECT count(*) AS n FROM audit_log")
  print(("fill: %d call records in %.1f s of CPU; audit_log has %d rows"):format(written, os.clock() - c0, r.n))
  srv.db:close()
  srv.master:close()
  loop.stop()
end)
loop.run()
return rc
