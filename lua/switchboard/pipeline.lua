-- The one path every tools/call takes:
--   find tool → validate arguments → policies → handler → audit record.
-- Returns an MCP CallToolResult. Failures the agent can act on come back
-- as isError results; the audit record is written whatever the end.
local loop = require("core.loop")
local json = require("switchboard.json")
local log = require("switchboard.log")
local schema = require("switchboard.schema")
local registry = require("switchboard.registry")
local escalations_store = require("switchboard.store.escalations")
local directory = require("switchboard.directory")
local sends = require("switchboard.sends")
local connections = require("switchboard.connections")
local taint = require("switchboard.taint")

local M = {}

-- Results in the suite's servers are checked against the tool's output
-- schema strictly: a result that does not match becomes an error there
-- (elsewhere it is logged and returned as it is).
local STRICT_RESULTS = os.getenv("SWITCHBOARD_CHECK_RESULTS") == "1"

-- A CallToolResult: the paragraph first; structured data is repeated as a
-- JSON text block right after it (for clients that read only content);
-- opts.blocks, more content blocks a handler gave, come last. The JSON
-- block is left out when it would take the result over opts.limit bytes.
local function result(text, data, is_error, opts)
  opts = opts or {}
  local content = { { type = "text", text = text } }
  local r = { content = content }
  if data ~= nil then
    r.structuredContent = data
    local ok, blob = pcall(json.encode, data)
    if ok then
      local size = 0
      -- the JSON text goes out twice, as data and quoted as a string (6
      -- bytes a byte at most quoted, \u001f), so a blob far under the limit
      -- is not quoted just to be measured
      if opts.limit then
        local blocks = 0
        for _, b in ipairs(opts.blocks or {}) do blocks = blocks + #json.encode(b) end
        if 8 * (#blob + #text) + blocks + 260 > opts.limit then
          local eok, quoted = pcall(json.encode, blob)
          size = #blob + (eok and #quoted or 2 * #blob) + #json.encode(text) + 256 + blocks
        end
      end
      if not opts.limit or size <= opts.limit then
        content[#content + 1] = { type = "text", text = blob }
      else
        log.info("pipeline: the JSON text block of a %d-byte structured result was left out (limits.result_bytes)",
          #blob)
      end
    end
  end
  for _, b in ipairs(opts.blocks or {}) do content[#content + 1] = b end
  if is_error then r.isError = true end
  return r
end
M.result = result

-- Content blocks a handler may add: type → { field = "string" | "integer"
-- | "table", required when the name is in `required` }.
local BLOCKS = {
  text = { fields = { text = "string" }, required = { "text" } },
  image = { fields = { data = "string", mimeType = "string" }, required = { "data", "mimeType" }, media = "image" },
  audio = { fields = { data = "string", mimeType = "string" }, required = { "data", "mimeType" }, media = "audio" },
  resource_link = { fields = { uri = "string", name = "string", title = "string", description = "string",
                               mimeType = "string", size = "integer" }, required = { "uri", "name" } },
  -- an embedded resource: { uri, mimeType?, text | blob (base64) }
  resource = { fields = { resource = "table" }, required = { "resource" } },
}

-- The embedded resource of a resource block: true, or nil and the rule.
local function check_resource(at, r)
  if type(r.uri) ~= "string" or not r.uri:match("^%a[%w%+%-%.]*:%S+$") then
    return nil, at .. ".resource.uri: must be a URI"
  end
  for k, v in pairs(r) do
    if not (k == "uri" or k == "mimeType" or k == "text" or k == "blob" or k == "_meta") then
      return nil, ("%s.resource.%s: not a field of an embedded resource"):format(at, tostring(k))
    end
    if k ~= "_meta" and (type(v) ~= "string" or not utf8.len(v)) then
      return nil, ("%s.resource.%s: must be a UTF-8 string"):format(at, k)
    end
  end
  if (r.text == nil) == (r.blob == nil) then
    return nil, at .. ".resource: needs exactly one of text or blob"
  end
  if r.blob and (#r.blob % 4 ~= 0 or not r.blob:match("^[%w%+/]*=?=?$")) then
    return nil, at .. ".resource.blob: must be base64"
  end
  return true
end

-- Check res.content: true, or nil and "content[i].field: rule".
local function check_blocks(list)
  if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) then
    return nil, "content: must be a list of content blocks"
  end
  for k in pairs(list) do
    if math.type(k) ~= "integer" or k < 1 or k > #list then return nil, "content: must be a list" end
  end
  for i, b in ipairs(list) do
    local at = ("content[%d]"):format(i)
    if type(b) ~= "table" then return nil, at .. ": must be a table" end
    local spec = BLOCKS[b.type]
    if not spec then
      return nil, ("%s.type: must be text, image, audio, resource_link or resource (got %s)"):format(at,
        tostring(b.type))
    end
    for _, f in ipairs(spec.required) do
      if b[f] == nil or b[f] == "" then return nil, ("%s.%s: required for a %s block"):format(at, f, b.type) end
    end
    for k, v in pairs(b) do
      local want = spec.fields[k]
      if k == "type" then
        want = "string"
      elseif k == "annotations" then
        want = "table"
      elseif not want then
        return nil, ("%s.%s: not a field of a %s block"):format(at, tostring(k), b.type)
      end
      local ok = want == "integer" and math.type(v) == "integer" or want ~= "integer" and type(v) == want
      if not ok then return nil, ("%s.%s: must be a %s"):format(at, k, want) end
      if want == "string" and not utf8.len(v) then return nil, ("%s.%s: must be valid UTF-8"):format(at, k) end
    end
    if spec.media then
      if not b.mimeType:match("^" .. spec.media .. "/[%w%.%+%-]+$") then
        return nil, ("%s.mimeType: must be an %s/… type (got %q)"):format(at, spec.media, b.mimeType)
      end
      if #b.data % 4 ~= 0 or not b.data:match("^[%w%+/]*=?=?$") then
        return nil, at .. ".data: must be base64"
      end
    end
    if b.type == "resource_link" and not b.uri:match("^%a[%w%+%-%.]*:%S+$") then
      return nil, ("%s.uri: must be a URI (got %q)"):format(at, b.uri)
    end
    if b.type == "resource" then
      local ok, err = check_resource(at, b.resource)
      if not ok then return nil, err end
    end
  end
  return true
end
M.check_blocks = check_blocks

-- Blocks an older protocol version does not know become text: audio
-- came with 2025-03-26, resource links with 2025-06-18.
local function blocks_for(version, list)
  if not list or type(version) ~= "string" then return list end
  local out = {}
  for i, b in ipairs(list) do
    if b.type == "resource_link" and version < "2025-06-18" then
      b = { type = "text", text = ("%s: %s%s"):format(b.name, b.uri, b.mimeType and (" (" .. b.mimeType .. ")") or "") }
    elseif b.type == "audio" and version < "2025-03-26" then
      b = { type = "text", text = ("(an %s recording, not shown in this protocol version)"):format(b.mimeType) }
    end
    out[i] = b
  end
  return out
end

-- The result's structured data against the tool's output schema (its own
-- for a result, with the pipeline's error shapes for an error): r, or an
-- error result in strict mode when it does not match.
-- Outside strict mode a result that does not match costs only a log line,
-- so not every result is checked: the first RESULTS_CHECKED of each tool,
-- then one in CHECK_EVERY.
local RESULTS_CHECKED, CHECK_EVERY = 100, 64
local results_seen = setmetatable({}, { __mode = "k" })
local function to_check(tool)
  if STRICT_RESULTS then return true end
  local n = (results_seen[tool] or 0) + 1
  results_seen[tool] = n
  return n <= RESULTS_CHECKED or n % CHECK_EVERY == 0
end

local function checked(tool, r)
  local data = r.structuredContent
  local s = r.isError and tool.result_schema or tool.output_schema
  if data == nil or not s or not to_check(tool) or schema.conforms(s, data) then return r end
  local ok, msg = schema.validate(s, data, { what = "result" })
  if ok then return r end
  log.error("tool %s: a result that does not match its outputSchema: %s", tool.name, msg)
  if not STRICT_RESULTS then return r end
  return result(("The tool %s returned a result that does not match its outputSchema. %s"):format(tool.name, msg),
    nil, true)
end

-- An error a handler returned: a string or { message, code, hint, more_info, data }.
local function error_result(err, opts)
  if type(err) ~= "table" then return result(tostring(err), nil, true), tostring(err) end
  local message = type(err.message) == "string" and err.message or "The tool failed."
  local parts = { message }
  if err.code then parts[1] = ("%s (error %s)"):format(parts[1], tostring(err.code)) end
  if err.hint then parts[#parts + 1] = err.hint end
  if err.more_info then parts[#parts + 1] = "More: " .. err.more_info end
  local data = { error = { message = message, code = err.code, hint = err.hint,
                           more_info = err.more_info } }
  if err.data then for k, v in pairs(err.data) do data[k] = v end end
  return result(table.concat(parts, " "), data, true, opts), err.message
end

-- The arguments of a held call may hold what the gateway caught: they are
-- sealed with the tenant's key, like credentials.
local function seal_arguments(rt, tenant_id, args)
  local t = directory.tenant_by_id(rt.db, tenant_id)
  return directory.seal(rt.master, t, M.ARGUMENTS_FIELD, json.encode(args))
end
M.ARGUMENTS_FIELD = "escalation.arguments"

-- The escalation's id, or nil, err when it could not be stored.
local function escalate(rt, call, d)
  local id, err = escalations_store.open(rt.db, {
    tenant_id = call.tenant.id, agent_id = call.agent.id, sender_tier = call.sender, tool = call.tool,
    action = call.action, arguments = seal_arguments(rt, call.tenant.id, call.args),
    kind = d.decision == "hold" and "hold" or "escalate", reason = d.reason, policy = d.policy,
    execution_id = call.execution_id })
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
                actor = call.approved_by, texts = registry.send_texts(tool) }
  local limit = rt.cfg and rt.cfg.limits and rt.cfg.limits.result_bytes
  local function finish(res, decision, outcome, detail)
    if res then res = checked(tool, res) end
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

  -- 1. arguments against the input schema, the chosen action's (a tool
  -- with actions), then the tool's own rules
  local args, err = schema.validate(tool.input_schema, call.args)
  if args and tool.actions then
    local ok, aerr = registry.check_action(tool, args)
    if not ok then args, err = nil, "Invalid arguments: " .. aerr end
  end
  if args and tool.check then
    local ok, cerr = tool.check(args)
    if not ok then args, err = nil, "Invalid arguments: " .. tostring(cerr) end
  end
  rec.action = type(call.args) == "table" and type(call.args.action) == "string" and call.args.action or nil
  if not args then return finish(result(err, nil, true), "invalid", "invalid", { error = err }) end
  rec.args = args

  -- the tenant's connection, when the tool needs one
  local conn
  if tool.connection then
    local cerr
    conn, cerr = connections.for_call(rt.db, tool.connection, s.tenant.id)
    if not conn then return finish(result(cerr, nil, true), "invalid", "connection", { error = cerr }) end
  end
  -- what the call would send, from the tool's declaration
  local sending = registry.outbound(tool, args)

  -- 2. policies in priority order
  local view = {
    tool = tool.name, action = args.action, args = args, writes = registry.writes(tool, args),
    sender = call.sender, agent = { name = s.agent.name, type = s.agent.type },
    tenant = { name = s.tenant.name, features = s.tenant.features },
    approved = call.approved_by ~= nil,
    connection = conn and connections.policy_view(tool.connection, conn) or nil,
    integration = tool.connection,
    -- what the call is: policies apply by kind (see switchboard.policy)
    sends = sending ~= nil, connected = tool.connection ~= nil, reads_untrusted = tool.untrusted ~= nil,
    recipient = sending and sending.recipient, outbound = sending and sending.outbound,
  }
  -- a call that sends counts and records under the tenant's send lock
  -- (exact limits across nodes on PostgreSQL; nothing on SQLite), given
  -- back once its record is committed or the call ends without one
  local unlock
  local _ <close> = setmetatable({}, { __close = function() if unlock then unlock() end end })
  if sending and conn then
    local lerr
    unlock, lerr = sends.lock(rt.db, s.tenant.id)
    if not unlock then
      log.error("sends: the send lock of tenant %d could not be taken: %s", s.tenant.id, tostring(lerr))
      return finish(result(sends.STORAGE_UNAVAILABLE, nil, true), "error", "failed",
        { error = "storage unavailable", storage = tostring(lerr) })
    end
  end
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
        d.policy, d.reason), { status = "not_stored" }, true, { limit = limit }),
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
    return finish(result(text, { escalation_id = id, status = d.decision == "hold" and "held" or "escalated" }, true,
      { limit = limit }),
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
  local cred, client, tenant_row
  if conn then
    -- the session holds the tenant's (wrapped) data key; an approval reads it
    tenant_row = s.tenant.data_key and s.tenant or directory.tenant_by_id(rt.db, s.tenant.id)
    client, cred = connections.open_client(rt, tool.connection, tenant_row, conn)
    if not client then
      return finish(result("The tenant's stored credentials could not be opened; an operator must update them.",
        nil, true), d.decision, "error", { error = "credential" })
    end
    ctx.connection, ctx.client, ctx[tool.connection] = conn, client, client
  end
  -- the one way a tool sends (the tool never sees rt: master key, database)
  local release, sent
  if sending and conn and sending.recipient then release = sends.claim(s.tenant.id, sending.recipient) end
  if unlock then
    local claim_release = release
    release = function()
      if claim_release then claim_release() end
      unlock()
    end
  end
  if sending and conn then
    ctx.send = function(spec)
      local body, serr, info = sends.send(rt, {
        tenant = tenant_row, agent = s.agent, escalation_id = call.escalation_id, tool = tool.name,
        action = args.action, execution_id = call.execution_id, call_id = call.id, recipient = sending.recipient,
        integration = tool.connection, cancelled = call.is_cancelled, release = release }, spec)
      sent = info
      return body, serr
    end
  else
    ctx.send = function() error("ctx.send: this call sends nothing (its tool declares no `sends`)", 2) end
  end
  if conn then
    ctx.delivery = function(ref) return sends.delivery(rt, s.tenant, ref) end
  end
  local ok, res, herr = pcall(registry.handler(tool, args), ctx, args)
  if release then release() end
  if cred then
    cred:close()
    rec.retries = client.retries
  end
  -- the audit's account: the send's, with what the tool adds (its result's
  -- or error's `outcome` and `audit`)
  local function account(r)
    local detail
    if sent then detail = {}; for k, v in pairs(sent.detail) do detail[k] = v end end
    if type(r) == "table" and type(r.audit) == "table" then
      detail = detail or {}
      for k, v in pairs(r.audit) do detail[k] = v end
    end
    local outcome = type(r) == "table" and type(r.outcome) == "string" and r.outcome or (sent and sent.outcome)
    return outcome, detail
  end
  if not ok then
    log.error("tool %s raised: %s", tool.name, tostring(res))
    return finish(result(("The tool %s failed with an internal error; the operator can find it in the log."
      .. " Do not retry right away."):format(tool.name), nil, true), d.decision, "error", { error = "internal error" })
  end
  if res == nil then
    local r, msg = error_result(herr or "the tool returned nothing", { limit = limit })
    local outcome, detail = account(herr)
    return finish(r, d.decision, outcome or "failed", detail or { error = msg })
  end
  local malformed = (type(res) ~= "table" or type(res.text) ~= "string")
    and ("%s instead of { text = …, data = …, content = … }"):format(type(res))
  if not malformed and res.content ~= nil then
    local bok, berr = check_blocks(res.content)
    if not bok then malformed = berr end
  end
  if malformed then
    log.error("tool %s returned a malformed result: %s", tool.name, malformed)
    return finish(result(("The tool %s returned a malformed result."):format(tool.name), nil, true),
      d.decision, "error", { error = "malformed result" })
  end
  local text = res.text
  if #flagged > 0 and res.notice ~= false then
    text = text .. " Note: this call was flagged for review (" .. table.concat(flagged, "; ") .. ")."
  end
  local outcome, detail = account(res)
  return finish(result(text, res.data, false, { limit = limit, blocks = blocks_for(s.version, res.content) }),
    d.decision, outcome or "ok", detail)
end

return M
