-- The one path every tools/call takes:
--   find tool → validate arguments → policies → handler → audit record.
-- Returns an MCP CallToolResult. Failures the agent can act on come back
-- as isError results; the audit record is written whatever the end.
local loop = require("core.loop")
local json = require("switchboard.json")
local log = require("switchboard.log")
local schema = require("switchboard.schema")
local registry = require("switchboard.registry")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")
local sends = require("switchboard.sends")
local taint = require("switchboard.taint")

local M = {}

local function result(text, data, is_error)
  local r = { content = { { type = "text", text = text } } }
  if data ~= nil then r.structuredContent = data end
  if is_error then r.isError = true end
  return r
end
M.result = result

-- An error a handler returned: a string or { message, code, hint, more_info, data }.
local function error_result(err)
  if type(err) ~= "table" then return result(tostring(err), nil, true), tostring(err) end
  local parts = { err.message or "The tool failed." }
  if err.code then parts[1] = ("%s (error %s)"):format(parts[1], tostring(err.code)) end
  if err.hint then parts[#parts + 1] = err.hint end
  if err.more_info then parts[#parts + 1] = "More: " .. err.more_info end
  local data = { error = { message = err.message, code = err.code, hint = err.hint,
                           more_info = err.more_info } }
  if err.data then for k, v in pairs(err.data) do data[k] = v end end
  return result(table.concat(parts, " "), data, true), err.message
end

-- The arguments of a held call may hold what the gateway caught: they are
-- sealed with the tenant's key, like credentials.
local function seal_arguments(rt, tenant_id, args)
  local t = directory.tenant_by_id(rt.db, tenant_id)
  return require("core.store").blob(directory.seal(rt.master, t, M.ARGUMENTS_FIELD, json.encode(args)))
end
M.ARGUMENTS_FIELD = "escalation.arguments"

-- The escalation's id, or nil, err when it could not be stored.
local function escalate(rt, call, d)
  local db = rt.db
  local id, err = db:insert("INSERT INTO escalations (tenant_id, agent_id, sender_tier, tool, action,"
    .. " arguments, kind, reason, policy, created_at, execution_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    call.tenant.id, call.agent.id, call.sender, call.tool, call.action,
    seal_arguments(rt, call.tenant.id, call.args), d.decision == "hold" and "hold" or "escalate", d.reason, d.policy,
    db_mod.now(), call.execution_id)
  if not id then
    log.error("pipeline: the escalation of a %s call (policy %s) could not be stored: %s", call.tool, d.policy,
      tostring(err))
  end
  return id, err
end

-- call: { session, tool (definition), args, execution_id, progress(p, total, msg),
--         is_cancelled() , approved_by (for an approved escalation) }
function M.run(rt, call)
  local t0 = loop.time()
  local tool = call.tool
  local s = call.session
  local rec = { tenant_id = s.tenant.id, agent_id = s.agent.id, execution_id = call.execution_id,
                sender_tier = call.sender, tool = tool.name, args = call.args, policies = {},
                actor = call.approved_by }
  local function finish(res, decision, outcome, detail)
    if rec.approved_past or rec.flags then
      -- a copy: the tool's own detail table (ctx.audit_detail) is left as it is
      local d = {}
      for k, v in pairs(detail or {}) do d[k] = v end
      detail = d
    end
    if rec.approved_past then
      detail.approved_past = rec.approved_past
      detail.escalation_id = call.escalation_id
    end
    -- a flagged call keeps each flag's policy and reason, whatever the end
    if rec.flags then detail.flags = rec.flags end
    rec.decision, rec.outcome, rec.detail = decision, outcome, detail
    rec.duration_ms = (loop.time() - t0) * 1000
    rt.audit:record(rec)
    -- third-party text in a successful result: labelled, and the execution tainted
    if res and not res.isError then res = taint.label(rt, call, tool, res, function() loop.sleep(0) end) end
    return res
  end

  -- 1. arguments against the input schema, then the tool's own rules
  local args, err = schema.validate(tool.input_schema, call.args)
  if args and tool.check then
    local ok, cerr = tool.check(args)
    if not ok then args, err = nil, "Invalid arguments: " .. tostring(cerr) end
  end
  rec.action = type(call.args) == "table" and type(call.args.action) == "string" and call.args.action or nil
  if not args then return finish(result(err, nil, true), "invalid", "invalid", { error = err }) end
  rec.args = args

  -- the tenant's connection, when the tool needs one
  local provider, conn
  if tool.connection then
    provider = require("switchboard." .. tool.connection .. ".connection")
    local cerr
    conn, cerr = provider.for_call(rt.db, s.tenant.id)
    if not conn then return finish(result(cerr, nil, true), "invalid", "connection", { error = cerr }) end
  end

  -- 2. policies in priority order
  local view = {
    tool = tool.name, action = args.action, args = args, writes = registry.writes(tool, args),
    sender = call.sender, agent = { name = s.agent.name, type = s.agent.type },
    tenant = { name = s.tenant.name, features = s.tenant.features },
    approved = call.approved_by ~= nil,
    connection = conn and provider.policy_view(conn) or nil,
  }
  if conn then
    for k, fn in pairs(sends.policy_helpers(rt.db, s.tenant.id)) do view[k] = fn end
  end
  -- untrusted content this execution read (call.tainted) and who was sent to before
  taint.view(rt, call, view)
  if conn then view.sent_before = sends.sent_before(rt.db, s.tenant.id) end
  local d = rt.policies:evaluate(view)
  rec.policies = d.ran
  if d.failed then
    log.error("policy %s failed: %s", d.policy, d.error)
  end
  local flagged = {}
  for _, f in ipairs(d.flags or {}) do flagged[#flagged + 1] = f.policy .. ": " .. f.reason end
  if #flagged > 0 then
    rec.flags = {}
    for i, f in ipairs(d.flags) do rec.flags[i] = { policy = f.policy, reason = f.reason } end
  end
  -- an approved escalation ran past the holds and escalations (evaluate
  -- went on through the whole chain: a deny still refuses)
  if d.passed and #d.passed > 0 then rec.approved_past = d.passed end
  if d.decision == "deny" then
    return finish(result(("Refused by policy %s: %s"):format(d.policy, d.reason), nil, true),
      "deny", "denied", { policy = d.policy, reason = d.reason })
  elseif d.decision == "hold" or d.decision == "escalate" then
    local id = escalate(rt, { tenant = s.tenant, agent = s.agent, sender = call.sender,
      tool = tool.name, action = args.action, args = args, execution_id = call.execution_id }, d)
    if not id then
      return finish(result(("%s by policy %s: %s. The escalation could not be stored (storage unavailable), so"
        .. " nothing was sent and no person was asked to review it. Try again later; if it keeps failing, tell an"
        .. " operator."):format(d.decision == "hold" and "Held for human review" or "Escalated to a human",
        d.policy, d.reason), { status = "not_stored" }, true),
        d.decision, "error", { policy = d.policy, reason = d.reason, error = "escalation not stored" })
    end
    local text
    if d.decision == "hold" then
      text = ("Held for human review by policy %s: %s. Escalation %s was opened; the call will run"
        .. " only if an operator approves it. Do not retry."):format(d.policy, d.reason, tostring(id))
    else
      text = ("Escalated to a human by policy %s: %s. Escalation %s was opened; tell the user a person will review it.")
        :format(d.policy, d.reason, tostring(id))
    end
    return finish(result(text, { escalation_id = id, status = d.decision == "hold" and "held" or "escalated" }, true),
      d.decision, d.decision == "hold" and "held" or "escalated", { escalation_id = id, policy = d.policy, reason = d.reason })
  end
  if call.is_cancelled() then
    return finish(nil, d.decision, "cancelled")
  end

  -- 3. the handler, in this coroutine; it may wait on HTTP
  local ctx = {
    tenant = s.tenant, agent = s.agent, sender = call.sender, call_id = call.id,
    execution_id = call.execution_id, settings = rt.cfg.tool_settings[tool.name] or {},
    log = log, flags = flagged,
    progress = call.progress or function() end, cancelled = call.is_cancelled,
    tool_name = tool.name, action = args.action, escalation_id = call.escalation_id,
  }
  sends.bind(ctx, rt) -- for sends.post; the tool itself never sees rt (master key, database)
  local cred
  if conn then
    -- the session holds the tenant's (wrapped) data key; an approval reads it
    local tenant_row = s.tenant.data_key and s.tenant or directory.tenant_by_id(rt.db, s.tenant.id)
    local client
    client, cred = provider.open_client(rt, tenant_row, conn)
    if not client then
      return finish(result("The tenant's stored credentials could not be opened; an operator must update them.",
        nil, true), d.decision, "error", { error = "credential" })
    end
    ctx.connection, ctx[tool.connection], ctx.tenant_row = conn, client, tenant_row
  end
  if conn and view.writes and type(args.to) == "string" then
    ctx.send_claim = sends.claim(s.tenant.id, args.to)
  end
  local ok, res, herr = pcall(tool.handler, ctx, args)
  if ctx.send_claim then ctx.send_claim() end
  if cred then
    cred:close()
    local client = ctx[tool.connection]
    rec.retries = client.retries
  end
  local outcome_detail = ctx.audit_detail
  if not ok then
    log.error("tool %s raised: %s", tool.name, tostring(res))
    return finish(result(("The tool %s failed with an internal error; the operator can find it in the log."
      .. " Do not retry right away."):format(tool.name), nil, true), d.decision, "error", { error = "internal error" })
  end
  if res == nil then
    local r, msg = error_result(herr or "the tool returned nothing")
    return finish(r, d.decision, ctx.outcome or "failed", outcome_detail or { error = msg })
  end
  if type(res) ~= "table" or type(res.text) ~= "string" then
    log.error("tool %s returned %s instead of { text = …, data = … }", tool.name, type(res))
    return finish(result(("The tool %s returned a malformed result."):format(tool.name), nil, true),
      d.decision, "error", { error = "malformed result" })
  end
  local text = res.text
  if #flagged > 0 and res.notice ~= false then
    text = text .. " Note: this call was flagged for review (" .. table.concat(flagged, "; ") .. ")."
  end
  return finish(result(text, res.data), d.decision, ctx.outcome or "ok", outcome_detail)
end

return M
