-- Escalations: calls a policy held or escalated, waiting for a person.
-- An escalation is decided once: approve runs the original call exactly
-- once through the rest of the pipeline (the approver is recorded);
-- reject closes it with a reason.
--
-- An approval and the send it runs are one recoverable unit: the send's
-- write-ahead record names its escalation, so after a crash during the
-- run the start settles each approved escalation that has no result from
-- its send record (sent, failed, or unknown once reconciliation had its
-- look); one with no send record sent nothing and is opened again.
local json = require("switchboard.json")
local log = require("switchboard.log")
local store = require("switchboard.store.escalations")
local directory = require("switchboard.directory")
local pipeline = require("switchboard.pipeline")
local sends = require("switchboard.sends")

local M = {}

M.REOPENED = "the approval by %s was interrupted by a restart before anything was sent; approve it again to run it"

-- The result of an approved escalation whose run was interrupted, from
-- its send record; at_start leaves an unknown send to reconciliation.
-- A result whose outcome was unknown is replaced once reconciliation
-- finds the message.
function M.settle_from_send(rt, esc_id, at_start)
  local db = rt.db
  local e = store.unsettled(db, esc_id)
  if not e then return end
  local s = store.last_send(db, esc_id)
  if e.result and (not s or s.status == "unknown") then return end
  if not s or (s.status == "failed" and s.error_message == sends.NOT_SENT) then
    local note = M.REOPENED:format(tostring(e.decided_by))
    local n, err = store.reopen(db, esc_id, note)
    if not n then
      log.error("escalations: escalation %d could not be opened again: %s", esc_id, tostring(err))
      return
    end
    log.warn("escalations: escalation %d: %s", esc_id, note)
    directory.settings_audit(db, e.tenant_id, "recovery", "escalation.reopen",
      { id = esc_id, status = "approved", decided_by = e.decided_by }, { id = esc_id, status = "open", note = note })
    return
  end
  -- an unknown send from the last day is reconciled first (the start
  -- looks for it, then calls again)
  if s.status == "pending" or s.status == "in_flight"
    or (at_start and s.status == "unknown" and s.created_unix >= os.time() - 86400) then
    return
  end
  local who = tostring(e.decided_by)
  local summary
  if s.status == "sent" then
    summary = { is_error = false, text = ("Approved by %s and sent (the run was interrupted by a restart):"
      .. " %s to %s, provider id %s."):format(who, s.tool, s.recipient, tostring(s.sid)) }
  elseif s.status == "failed" then
    summary = { is_error = true, text = ("Approved by %s; the send to %s failed: %s%s."):format(who, s.recipient,
      tostring(s.error_message), s.error_code and (" (error " .. s.error_code .. ")") or "") }
  else
    summary = { is_error = true, text = ("Approved by %s; the outcome of the send to %s is unknown: the request"
      .. " may have gone out before a restart and was not found in the message list. Check with a search before"
      .. " sending it again."):format(who, s.recipient) }
  end
  summary.data = { outcome = s.status, send_id = s.id, sid = s.sid, recovered = true }
  local n, err = store.set_result(db, esc_id, summary)
  if not n then
    log.error("escalations: the result of escalation %d could not be stored: %s", esc_id, tostring(err))
  else
    log.info("escalations: escalation %d settled from its send record: %s", esc_id, s.status)
  end
end

-- At start: each approved escalation without a result.
-- live_since (a unix time, several nodes): only the approvals of nodes
-- whose lease ended before it (a live node's may still be running).
function M.recover(rt, live_since)
  for _, id in ipairs(assert(store.approved_without_result(rt.db, live_since))) do
    M.settle_from_send(rt, id, true)
  end
end

-- The sealed arguments, opened (nil when they do not open).
local function arguments(server, r)
  local t = directory.tenant_by_id(server.db, r.tenant_id)
  local plain = directory.open(server.master, t, pipeline.ARGUMENTS_FIELD, r.arguments)
  return plain and json.decode(plain) or nil
end

local function view(r, server)
  return { id = r.id, tenant = r.tenant_name, agent = r.agent_name, sender_tier = r.sender_tier, tool = r.tool,
           action = r.action, kind = r.kind, reason = r.reason, policy = r.policy, status = r.status,
           decided_by = r.decided_by, decided_at = r.decided_at, note = r.decision_note,
           created_at = r.created_at, arguments = server and arguments(server, r) or nil,
           result = r.result }
end

function M.install(admin)
  local refuse, methods = admin.refuse, admin.methods

  local function find(self, p, what)
    local t = self:tenant(p, what)
    local id = math.tointeger(tonumber(p.id))
    if not id then refuse(what .. ": give the escalation's number", -32602) end
    local r = store.get(self.db, id, t.id)
    if not r then refuse(("no escalation %d in tenant '%s'"):format(id, t.name)) end
    return r, t
  end

  -- One page, newest first (keyset on id, cursor "es1-<id>").
  methods["escalations.list"] = function(self, p)
    local t = self:tenant(p, "escalations")
    local status = p.status or "open"
    local limit = admin.page_limit(p, "escalations")
    local after = admin.read_cursor(p, "es1", 1, "escalations") or math.maxinteger
    local rows = assert(store.page(self.db, t.id, status ~= "all" and status or nil, after, limit + 1))
    local out, bytes, more = {}, 0, #rows > limit
    for i = 1, math.min(#rows, limit) do
      bytes = bytes + #rows[i].reason + #(rows[i].decision_note or "") + rows[i].result_bytes
      if i > 1 and bytes > admin.PAGE_BYTES then more = true break end
      out[i] = view(rows[i])
    end
    return { tenant = t.name, escalations = json.array(out),
             next = more and admin.cursor("es1", out[#out].id) or json.null }
  end

  methods["escalation.show"] = function(self, p)
    return view((find(self, p, "escalation show")), self.server)
  end

  methods["escalation.reject"] = function(self, p)
    local r, t = find(self, p, "escalation reject")
    local reason = type(p.reason) == "string" and p.reason ~= "" and p.reason or nil
    if not reason then refuse("escalation reject: --reason is required", -32602) end
    local n, err = store.reject(self.db, r.id, p.actor, reason)
    if not n then refuse(("escalation %d: the decision could not be stored (%s)"):format(r.id, tostring(err))) end
    if n ~= 1 then
      refuse(("escalation %d was already decided (%s by %s); nothing was done"):format(r.id, r.status,
        tostring(r.decided_by)))
    end
    directory.settings_audit(self.db, t.id, p.actor, "escalation.reject", { status = "open" },
      { id = r.id, status = "rejected", reason = reason })
    return view(store.get(self.db, r.id), self.server)
  end

  methods["escalation.approve"] = function(self, p)
    local r, t = find(self, p, "escalation approve")
    if r.status ~= "open" then
      refuse(("escalation %d was already decided (%s by %s); nothing was done"):format(r.id, r.status,
        tostring(r.decided_by)))
    end
    local server = self.server
    local agent = directory.agent(self.db, t.id, r.agent_name)
    if not agent or agent.revoked_at then
      refuse(("escalation %d: agent %s was revoked; reject it instead"):format(r.id, r.agent_name))
    end
    local enabled = directory.tenant_groups(self.db, t.id)
    local tool = server.registry:find(r.tool, agent.groups, enabled)
    if not tool then
      refuse(("escalation %d cannot run: the tool %s is no longer available to agent %s"
        .. " (was the connection disconnected, or the tool group removed?)"):format(r.id, r.tool, agent.name))
    end
    if tool.connection then
      local conn, cerr = require("switchboard.connections").for_call(self.db, tool.connection, t.id)
      if not conn then refuse(("escalation %d cannot run now: %s"):format(r.id, cerr)) end
    end
    local args = arguments(server, r)
    if not args then refuse(("escalation %d: its arguments could not be opened"):format(r.id)) end
    -- decide first, atomically: a second approve finds it decided
    local n, err = store.approve(self.db, r.id, p.actor,
      require("switchboard.db").is_pg(self.db) and require("switchboard.cluster").NODE or nil)
    if not n then
      refuse(("escalation %d: the approval could not be stored (%s); nothing was run"):format(r.id, tostring(err)))
    end
    if n ~= 1 then refuse(("escalation %d was already decided; nothing was done"):format(r.id)) end
    directory.settings_audit(self.db, t.id, p.actor, "escalation.approve", { status = "open" },
      { id = r.id, status = "approved" })
    local session = { tenant = { id = t.id, name = t.name, features = t.features, enabled = enabled,
                                 data_key = t.data_key },
                      agent = agent }
    -- a call in flight like an agent's: SIGTERM waits for it (limits.shutdown_seconds)
    server.inflight = server.inflight + 1
    local ok, res = pcall(pipeline.run, server, {
      session = session, tool = tool, args = args, id = "escalation-" .. r.id,
      execution_id = r.execution_id or ("escalation-" .. r.id), sender = r.sender_tier,
      approved_by = p.actor, escalation_id = r.id, is_cancelled = function() return false end,
    })
    if not ok then res = pipeline.result("internal error: " .. tostring(res), nil, true) end
    local summary = { is_error = res.isError == true, text = res.content[1].text, data = res.structuredContent }
    local stored, serr = store.set_result(self.db, r.id, summary)
    if not stored then
      -- the next start settles it from its send record
      log.error("escalations: the result of escalation %d could not be stored: %s", r.id, tostring(serr))
    end
    server.inflight = server.inflight - 1
    server:call_done()
    return view(store.get(self.db, r.id), self.server)
  end
end

return M
