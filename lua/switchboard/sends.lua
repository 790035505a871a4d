-- Write-ahead sends: before a message or a verification code goes out,
-- its record is committed (in_flight) in the group commit of the db
-- writer, shared with the sends queued meanwhile; it ends sent (with
-- Twilio's SID), failed (with Twilio's error) or unknown (the request went
-- out and no answer came back). A send whose record cannot be committed is
-- not sent. On start, in_flight records become unknown (and pending ones,
-- from earlier versions, failed: they never went out); unknown messages
-- are reconciled by listing the recipient's messages; every change
-- recovery makes is written to the audit trail. Nothing is ever sent twice.
local loop = require("core.loop")
local vault = require("core.vault")
local store = require("core.store")
local json = require("switchboard.json")
local log = require("switchboard.log")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")
local T = require("switchboard.twilio.tools")

local M = {}

local FIELD = "send.request"

-- What a pending record becomes at start: it never went out.
M.NOT_SENT = "not sent: interrupted before the request"

-- The statements of the call path (tests hold each against its query
-- plan: none may scan the table).
M.SQL = {
  insert = "INSERT INTO sends (tenant_id, agent_id, escalation_id, tool, action, recipient, request, body_hash,"
    .. " status, created_at, created_unix, updated_at, callback_token_hash,"
    .. " execution_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'in_flight', ?, ?, ?, ?, ?)",
  settle = "UPDATE sends SET status = ?, sid = ?, error_code = ?, error_message = ?, updated_at = ? WHERE id = ?",
  opt_out = "INSERT OR IGNORE INTO opt_outs (tenant_id, recipient, at) VALUES (?, ?, ?)",
  opted_out = "SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND recipient = ?",
  recent = "SELECT count(*) AS n FROM sends WHERE tenant_id = ? AND recipient = ? AND created_unix >= ?"
    .. " AND status != 'failed'",
  today = "SELECT count(*) AS n FROM sends WHERE tenant_id = ? AND created_unix >= ? AND status != 'failed'",
  by_sid = "SELECT 1 AS x FROM sends WHERE tenant_id = ? AND sid = ?",
}

-- {======================================================
-- The daily count: sends of a tenant since midnight (UTC) that did not
-- fail, read once a day from the store (a range of sends_tenant_created)
-- and then kept in step with the commits: +1 in the step that commits a
-- record, -1 in the step that commits its failure. db -> tenant -> { day, n }
-- =======================================================

local daily = setmetatable({}, { __mode = "k" })

local function midnight(t) return t - t % 86400 end

local function day_count(db, tenant_id)
  local per = daily[db]
  if not per then per = {} daily[db] = per end
  local day = midnight(os.time())
  local c = per[tenant_id]
  if not c or c.day ~= day then
    local r, err = db:row(M.SQL.today, tenant_id, day)
    if not r then error("the send records could not be read: " .. tostring(err), 0) end
    c = { day = day, n = r.n }
    per[tenant_id] = c
  end
  return c.n
end

local function counted(db, tenant_id, created_unix, delta)
  local per = daily[db]
  local c = per and per[tenant_id]
  if c and created_unix >= c.day then c.n = c.n + delta end
end

-- Forget the counts (recovery changed records outside the call path).
function M.recount(db)
  daily[db] = nil
end

-- }======================================================

-- true, or nil, err (the caller decides what a failed write means).
-- Outside the call path (recovery, reconciliation): written at once.
local function set_status(db, id, status, sid, code, message)
  return db:run(M.SQL.settle, status, sid, code, message, db_mod.now(), id)
end

-- A settle after the request went out, through the group commit, without
-- waiting for it: the call is answered at once and the settle is committed
-- with the next batch (before the call's audit record, which flushes the
-- writer first). It is recoverable: a settle lost to a crash or a failed
-- write leaves the record in_flight, which becomes unknown at the next
-- start and is reconciled. row: { id, tenant_id, created_unix }.
-- A failure leaves the daily count at once (the next call sees it) and
-- comes back to it if its settle is not stored (the record still counts).
local function settle_status(db, row, status, sid, code, message)
  if status == "failed" then counted(db, row.tenant_id, row.created_unix, -1) end
  return db_mod.writer(db):later(function(n, err)
    if not n then
      if status == "failed" then counted(db, row.tenant_id, row.created_unix, 1) end
      log.error("sends: send %d ended %s but that could not be stored (%s); it stays in_flight and is"
        .. " marked unknown at the next start", row.id, status, tostring(err))
    end
  end, M.SQL.settle, status, sid, code, message, db_mod.now(), row.id)
end

function M.body_hash(text)
  return text and vault.sha256_hex(text) or nil
end

-- What a template send is matched by: its SID and variables (the listed
-- message shows the rendered text, computed again at reconciliation).
function M.template_hash(sid, variables)
  return "template:" .. vault.sha256_hex(sid .. "\n" .. (variables or ""))
end

-- After the POST: record the end and the opt-out, if any.
local function settle(db, row, body, err)
  if body then
    settle_status(db, row, "sent", type(body.sid) == "string" and body.sid or nil, nil, nil)
    return "sent"
  end
  if err.unknown then
    settle_status(db, row, "unknown", nil, nil, err.message)
    return "unknown"
  end
  if err.code == 21610 then
    -- in the same commit as the failure
    db_mod.writer(db):later(function(n, oerr)
      if not n then log.error("sends: the opt-out of a recipient could not be stored: %s", tostring(oerr)) end
    end, M.SQL.opt_out, row.tenant_id, row.recipient, db_mod.now())
  end
  settle_status(db, row, "failed", nil, err.code, err.message)
  return "failed"
end

local function not_sent(ctx, outcome, message, detail)
  if ctx.send_claim then ctx.send_claim() end
  ctx.outcome = outcome
  detail = detail or {}
  detail.outcome, detail.error = outcome, message
  ctx.audit_detail = detail
  return nil, { message = message, unknown = false, not_sent = true, cancelled = outcome == "cancelled" }
end

M.STORAGE_UNAVAILABLE = "Not sent: storage unavailable. The send could not be recorded before going out, so"
  .. " nothing was sent to Twilio"
M.CANCELLED = "Not sent: the call was cancelled or passed its deadline before the request went out"
M.NOT_SENT_CANCELLED = "not sent: the call was cancelled before the request"

-- The runtime (database, master key) behind a call's ctx, out of the
-- tool's reach: the pipeline binds it, sends.post finds it.
local runtime_of = setmetatable({}, { __mode = "k" })
function M.bind(ctx, rt) runtime_of[ctx] = rt end

-- Send through ctx.twilio with a write-ahead record.
-- spec: { recipient, product, path, form, text (the body, for matching) }
-- Returns what client:post returns; sets ctx.outcome and ctx.audit_detail.
function M.post(ctx, spec)
  local rt = assert(runtime_of[ctx], "sends.post: a ctx the pipeline did not bind")
  local db = rt.db
  local tenant = ctx.tenant_row
  -- the agent was answered already (deadline or cancel): nothing goes out
  if ctx.cancelled and ctx.cancelled() then
    log.info("sends: %s call %s cancelled before its send: not sent", ctx.tool_name, tostring(ctx.call_id))
    return not_sent(ctx, "cancelled", M.CANCELLED)
  end
  -- a record written inside an open transaction is not durable until
  -- someone commits it: never send on one
  if db:in_transaction() then
    log.error("sends: a %s send was refused: a database transaction is open, so its record would not be"
      .. " durable", ctx.tool_name)
    return not_sent(ctx, "failed", M.STORAGE_UNAVAILABLE, { storage = "transaction open" })
  end
  local request = json.encode({ product = spec.product, path = spec.path, form = spec.form })
  local sealed = directory.seal(rt.master, tenant, FIELD, request)
  local now, created = db_mod.now(), os.time()
  -- a message send carries a status callback with a token of its own (only
  -- its hash is stored; the sealed request above never holds it)
  local token = M.callback_base(rt) and spec.path and spec.path:find("/Messages.json", 1, true)
    and vault.base64url(vault.random(32)) or nil
  local hash = M.body_hash(spec.text)
  if not hash and spec.form and spec.form.ContentSid then
    hash = M.template_hash(spec.form.ContentSid, spec.form.ContentVariables)
  end
  -- one commit before the request, shared with the sends queued meanwhile:
  -- the record is in_flight from the start (a record that never went out
  -- because the process died in between is reconciled as unknown)
  local id, err = db_mod.writer(db):insert(function(rowid)
    -- the claim ends in the same step that commits the record (or fails to)
    if ctx.send_claim then ctx.send_claim() end
    if rowid then counted(db, tenant.id, created, 1) end
  end, M.SQL.insert, tenant.id, ctx.agent and ctx.agent.id, ctx.escalation_id, ctx.tool_name, ctx.action,
    spec.recipient, store.blob(sealed), hash, now, created, now, token and vault.sha256_hex(token) or nil,
    ctx.execution_id)
  if not id then
    log.error("sends: the write-ahead record of a %s send for tenant %d could not be stored, so it was not"
      .. " sent: %s", ctx.tool_name, tenant.id, tostring(err))
    return not_sent(ctx, "failed", M.STORAGE_UNAVAILABLE, { storage = tostring(err) })
  end
  local row = { id = id, tenant_id = tenant.id, recipient = spec.recipient, created_unix = created }
  -- the commit took a loop turn: a call given up meanwhile sends nothing
  if ctx.cancelled and ctx.cancelled() then
    log.info("sends: %s call %s cancelled before its send: not sent", ctx.tool_name, tostring(ctx.call_id))
    settle_status(db, row, "failed", nil, nil, M.NOT_SENT_CANCELLED)
    return not_sent(ctx, "cancelled", M.CANCELLED, { send_id = id })
  end
  local form = spec.form
  if token then
    form = {}
    for k, v in pairs(spec.form) do form[k] = v end
    form.StatusCallback = ("%s/%d/%s"):format(M.callback_base(rt), id, token)
  end
  local body, perr = ctx.twilio:post(spec.product, spec.path, form, { cancelled = ctx.cancelled })
  local outcome = settle(db, row, body, perr)
  if outcome == "unknown" then M.reconcile_later(rt, id) end
  ctx.outcome = outcome
  ctx.audit_detail = { send_id = id, sid = body and body.sid or nil, status = body and body.status or nil,
                       error_code = perr and perr.code or nil, outcome = outcome }
  return body, perr
end

-- Write calls that passed the policies and have no send record yet (their
-- handler may wait on Twilio before it sends): counted with the records, so
-- concurrent calls cannot all pass the same limit. tenant -> { total, [to] }.
local claims = {}

-- Claim a send to recipient; returns a release function (idempotent).
-- sends.post releases it in the same step that writes the record.
function M.claim(tenant_id, recipient)
  local c = claims[tenant_id] or { total = 0, by = {} }
  claims[tenant_id] = c
  c.total = c.total + 1
  c.by[recipient] = (c.by[recipient] or 0) + 1
  local released = false
  return function()
    if released then return end
    released = true
    c.total = c.total - 1
    c.by[recipient] = c.by[recipient] - 1
    if c.by[recipient] == 0 then c.by[recipient] = nil end
  end
end

-- What recipient and volume policies may ask (all scoped to the tenant).
-- A count that cannot be read raises: the policy then fails, and a
-- failing policy denies (a limit never passes for want of a count).
function M.policy_helpers(db, tenant_id)
  local c = claims[tenant_id] or { total = 0, by = {} }
  return {
    recent_sends = function(recipient, seconds)
      local r, err = db:row(M.SQL.recent, tenant_id, recipient, os.time() - (seconds or 600))
      if not r then error("the send records could not be read: " .. tostring(err), 0) end
      return r.n + (c.by[recipient] or 0)
    end,
    sends_today = function()
      return day_count(db, tenant_id) + c.total
    end,
    opted_out = function(recipient)
      local r, err = db:row(M.SQL.opted_out, tenant_id, recipient)
      if r == nil and err then error("the opt-outs could not be read: " .. tostring(err), 0) end
      return r ~= nil
    end,
  }
end

-- call.sent_before(recipient) for policies: has the tenant sent to this
-- recipient before (a send Twilio accepted)? Raises when it cannot tell.
function M.sent_before(db, tenant_id)
  return function(recipient)
    local r, err = db:row("SELECT 1 AS x FROM sends WHERE tenant_id = ? AND recipient = ? AND sid IS NOT NULL LIMIT 1",
      tenant_id, recipient)
    if r == nil and err then error("the send records could not be read: " .. tostring(err), 0) end
    return r ~= nil
  end
end

-- A client for a tenant's stored connection (recovery runs outside calls).
local function with_client(rt, tenant_id, fn)
  local conn_mod = require("switchboard.twilio.connection")
  local conn = conn_mod.get(rt.db, tenant_id)
  if not conn then return nil, "the tenant's Twilio connection was removed" end
  local tenant = directory.tenant_by_id(rt.db, tenant_id)
  local ok, res = pcall(function()
    return table.pack(conn_mod.with_client(rt, tenant, conn, function(c) return fn(c, tenant) end))
  end)
  if not ok then return nil, tostring(res) end
  if not res[1] then return nil, res[2] end
  return table.unpack(res, 2, res.n)
end

local function day_of(created_unix)
  return T.date(created_unix - 60)
end

-- The text a template send shows in the message list: the template's
-- text with its {{n}} placeholders filled (nil when it has no text).
local function template_text(c, sid, variables)
  local body = c:get("content", ("/v1/Content/%s"):format(sid))
  local types = type(body) == "table" and type(body.types) == "table" and body.types or nil
  local text
  for _, kind in ipairs({ "twilio/text", "twilio/media", "twilio/quick-reply", "twilio/call-to-action" }) do
    local t = types and types[kind]
    if type(t) == "table" and type(t.body) == "string" then text = t.body break end
  end
  if not text then return nil end
  local vars = type(variables) == "string" and json.decode(variables) or {}
  if type(vars) ~= "table" then vars = {} end
  return (text:gsub("{{%s*([%w_]+)%s*}}", function(k)
    local v = vars[k]
    if v == nil then return nil end
    return tostring(v)
  end))
end

-- An audit record of what recovery or reconciliation did to a send: each
-- send that may have reached Twilio has one, whatever happened to the
-- record of its call.
local function audit(rt, row, outcome, detail)
  detail.send_id, detail.outcome = row.id, outcome
  rt.audit:record({ tenant_id = row.tenant_id, agent_id = row.agent_id, execution_id = "recovery",
                    tool = row.tool, action = row.action, args = { to = row.recipient }, decision = "recovery",
                    policies = {}, outcome = outcome, detail = detail, actor = "recovery" })
end

-- Match an unknown message send against the recipient's messages.
-- Returns true (now sent), false (not found) or nil, err.
local function reconcile_one(rt, row)
  local req = directory.open(rt.master, directory.tenant_by_id(rt.db, row.tenant_id), FIELD, row.request)
  if not req then return nil, "the record could not be opened" end
  req = json.decode(req)
  if type(req) ~= "table" or not req.path or not req.path:find("/Messages.json", 1, true) then
    return nil, "not a message"
  end
  if not row.body_hash then return nil, "nothing to match it by" end
  return with_client(rt, row.tenant_id, function(c)
    local form = req.form or {}
    local want = row.body_hash
    if want:find("^template:") then
      local text = template_text(c, form.ContentSid, form.ContentVariables)
      if not text then return nil, "its template's text could not be read" end
      want = M.body_hash(text)
    end
    local items = c:list("api", c:acct("Messages.json"), { To = form.To, ["DateSent>"] = day_of(row.created_unix),
      PageSize = 100 }, "messages", 500)
    -- oldest first: the earliest unclaimed match is this record's message
    for i = #(items or {}), 1, -1 do
      local m = items[i]
      -- the same text from the same sender, created after this record was
      -- (a minute of clock skew allowed), and not already another record's
      local created = T.parse_rfc2822(m.date_created)
      if type(m.body) == "string" and M.body_hash(m.body) == want
        and (form.From == nil or m.from == nil or m.from == form.From)
        and created and created >= row.created_unix - 60
        and not rt.db:row(M.SQL.by_sid, row.tenant_id, m.sid) then
        local ok, err = set_status(rt.db, row.id, "sent", m.sid, nil, "reconciled by listing messages")
        if not ok then return nil, "the match could not be stored: " .. tostring(err) end
        audit(rt, row, "sent", { sid = m.sid, reconciled = "found in the message list" })
        if row.escalation_id then require("switchboard.escalations").settle_from_send(rt, row.escalation_id) end
        return true
      end
    end
    return false
  end)
end

-- Send records whose call left no audit record (the process died between
-- the send's end and the audit commit): they get one now.
local UNAUDITED = "SELECT s.* FROM sends s WHERE s.created_unix >= ? AND s.status IN ('sent', 'failed', 'unknown')"
  .. " AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE " .. "(CASE WHEN json_valid(a.detail) THEN"
  .. " json_extract(a.detail, '$.send_id') END) = +s.id) ORDER BY s.id"  -- +: no affinity, so the index serves

local function stored(ok, row)
  if not ok then log.error("sends: recovery could not update send %d; it is left for the next start", row.id) end
  return ok
end

-- At start: in_flight → unknown; pending → failed (never sent);
-- approved escalations settled from their send; unknown → reconciled.
function M.recover(rt)
  local db = rt.db
  local since = os.time() - 2 * 86400
  local last = db:row("SELECT max(created_unix) AS t FROM sends")
  if last and last.t then since = math.min(since, last.t - 86400) end
  for _, row in ipairs(assert(db:query(UNAUDITED, since))) do
    audit(rt, row, row.status, { sid = row.sid, error_code = row.error_code, error = row.error_message,
                                 recovered = "its call's audit record was lost in a restart" })
  end
  local interrupted = assert(db:query("SELECT * FROM sends WHERE status = 'in_flight' ORDER BY id"))
  local why = "interrupted: the request may have gone out"
  for _, row in ipairs(interrupted) do
    -- a record that cannot be changed now stays as it is for the next start
    if stored(set_status(db, row.id, "unknown", nil, nil, why), row) then
      row.status = "unknown"
      audit(rt, row, "unknown", { error = why, recovered = "in_flight at start" })
    end
  end
  if #interrupted > 0 then log.warn("sends: %d interrupted sends marked unknown", #interrupted) end
  local pending = assert(db:query("SELECT * FROM sends WHERE status = 'pending' ORDER BY id"))
  for _, row in ipairs(pending) do
    if stored(set_status(db, row.id, "failed", nil, nil, M.NOT_SENT), row) then
      audit(rt, row, "failed", { error = M.NOT_SENT, recovered = "pending at start" })
    end
  end
  if #pending > 0 then
    log.warn("sends: %d sends recorded but never started before the restart were marked failed (not sent)",
      #pending)
  end
  M.recount(db)
  local escalations = require("switchboard.escalations")
  escalations.recover(rt)
  local unknown = assert(db:query("SELECT * FROM sends WHERE status = 'unknown' AND created_unix >= ? ORDER BY id",
    os.time() - 86400))
  if #unknown == 0 then return end
  loop.spawn(function()
    local found = 0
    for _, row in ipairs(unknown) do
      local ok, res, err = pcall(reconcile_one, rt, row)
      if ok and res then
        found = found + 1
      elseif not ok or res == false then
        if not ok then log.warn("sends: reconciling send %d failed: %s", row.id, tostring(res)) end
        -- Twilio lists a message once it is created: look once more later
        M.reconcile_later(rt, row.id)
      elseif err ~= "not a message" then
        log.warn("sends: send %d cannot be reconciled: %s", row.id, tostring(err))
      end
      if row.escalation_id then escalations.settle_from_send(rt, row.escalation_id) end
    end
    log.info("sends: reconciled %d of %d unknown sends", found, #unknown)
  end)
end

M.RECONCILE_DELAY = 60

-- An unknown send is looked for again a minute later (Twilio lists a
-- message once it is created), not only at the next start.
function M.reconcile_later(rt, id, delay)
  loop.spawn(function()
    loop.sleep(delay or M.RECONCILE_DELAY)
    if rt.draining then return end
    local row = rt.db:row("SELECT * FROM sends WHERE id = ? AND status = 'unknown'", id)
    if not row then return end
    local ok, err = pcall(reconcile_one, rt, row)
    if not ok then log.warn("sends: reconciling send %d failed: %s", id, tostring(err)) end
  end)
end

-- {======================================================
-- Delivery receipts: Twilio's status callbacks.
--
-- With http.public_url set, every message send carries a StatusCallback
-- <public_url>/twilio/status/<send id>/<token>, the token 32 random bytes
-- of its own (the record keeps only its SHA-256, compared in constant
-- time). Twilio signs callbacks with the account's Auth Token, which this
-- runtime never holds, so the token in the URL is what authenticates one.
-- A receipt moves the send's delivery status forward only (a replay, a
-- retry or a late one changes nothing), keeps the error code, closes an
-- unknown outcome at once (the callback names the message's sid) and is
-- written to the audit trail in the execution of the call that sent it.
-- =======================================================

M.CALLBACK_PATH = "/twilio/status/"

-- The status callback's base URL, or nil (receipts off).
function M.callback_base(rt)
  local url = rt.cfg and rt.cfg.http and rt.cfg.http.public_url
  if not url then return nil end
  return (url:gsub("/+$", "")) .. M.CALLBACK_PATH:gsub("/$", "")
end

-- The order of Twilio's message statuses: a receipt applies only when it
-- moves the status forward; read (WhatsApp) follows delivered only.
M.DELIVERY_RANK = { accepted = 0, scheduled = 0, queued = 0, sending = 1, sent = 2, delivered = 3,
                    undelivered = 3, failed = 3, canceled = 3, read = 4 }
local RANK = M.DELIVERY_RANK
local FINAL_BAD = { undelivered = true, failed = true, canceled = true }

-- The statuses a receipt of `status` may follow.
local function before(status)
  local out = {}
  for st, r in pairs(RANK) do
    if r < RANK[status] and not (status == "read" and FINAL_BAD[st]) then out[#out + 1] = st end
  end
  table.sort(out)
  return out
end

local NO_TOKEN = vault.sha256_hex("no callback token")

local SQL_RECEIPT = "UPDATE sends SET delivery_status = ?, delivery_error = coalesce(?, delivery_error),"
  .. " delivery_updated_at = ?, delivered_at = CASE WHEN ? THEN coalesce(delivered_at, ?) ELSE delivered_at END,"
  .. " callback_key = ? WHERE id = ? AND (callback_key IS NULL OR callback_key != ?)"
  .. " AND (delivery_status IS NULL OR delivery_status IN (%s))"
local SQL_RESOLVE = "UPDATE sends SET status = 'sent', sid = ?, error_message = ?, updated_at = ?"
  .. " WHERE id = ? AND status = 'unknown'"
M.RESOLVED = "reconciled by a status callback"
M.SETTLE_WAIT = 10

local counts = { applied = 0, duplicate = 0, refused = 0 }
M.receipt_counts = counts

local function refuse(status, why, id)
  counts.refused = counts.refused + 1
  log.warn("sends: a status callback for send %s was refused: %s", tostring(id), why)
  return status, why
end

-- One status callback. id: the send id of the URL; token: the URL's
-- token; f: the decoded form; key: its I-Twilio-Idempotency-Token (or nil).
-- Returns an HTTP status and a short text (nothing secret in either).
function M.receipt(rt, id, token, f, key)
  local db = rt.db
  local row = db:row("SELECT * FROM sends WHERE id = ?", id)
  -- the same work and the same answer for a send that does not exist and a
  -- wrong token: a prober learns nothing
  local ok = vault.equal(vault.sha256_hex(token), row and row.callback_token_hash or NO_TOKEN)
  if not (row and row.callback_token_hash and ok) then return refuse(404, "no such callback", id) end
  local function one(k) local v = f[k] if type(v) == "table" then return nil end return v end
  local sid, status = one("MessageSid"), one("MessageStatus")
  if type(sid) ~= "string" or not sid:match("^[SM]M%x+$") or #sid ~= 34 then
    return refuse(400, "MessageSid must be SM or MM followed by 32 hexadecimal characters", id)
  end
  if type(status) ~= "string" or not RANK[status] then
    return refuse(400, "MessageStatus is not a status of an outbound message", id)
  end
  local code = one("ErrorCode")
  if code ~= nil and code ~= "" then
    code = code:match("^%d+$") and math.tointeger(tonumber(code))
    if not code then return refuse(400, "ErrorCode must be a whole number", id) end
  else
    code = nil
  end
  local conn = require("switchboard.twilio.connection").get(db, row.tenant_id)
  local acct = one("AccountSid")
  if acct ~= nil and conn and conn.account_sid and acct ~= conn.account_sid then
    return refuse(403, "AccountSid is not the account of this send", id)
  end
  -- Twilio may call back before its answer to the POST has been read: wait
  -- (Twilio waits 15 s for an answer) until the send has settled
  local waited = 0
  while row.status == "in_flight" and waited < M.SETTLE_WAIT do
    loop.sleep(0.05)
    waited = waited + 0.05
    row = db:row("SELECT * FROM sends WHERE id = ?", id)
  end
  if row.status == "in_flight" then return 503, "the send has not settled yet, retry later" end
  if row.sid and row.sid ~= sid then return refuse(409, "MessageSid is not the message of this send", id) end
  if row.status == "failed" or row.status == "pending" then
    return refuse(409, "this send did not reach Twilio", id)
  end
  if not row.sid and db:row("SELECT 1 AS x FROM sends WHERE sid = ? AND id != ?", sid, id) then
    return refuse(409, "MessageSid is another send's message", id)
  end
  local writer = db_mod.writer(db)
  local now = db_mod.now()
  -- an unknown outcome ends here: the message exists at Twilio
  if row.status == "unknown" then
    local n, err = writer:run(nil, SQL_RESOLVE, sid, M.RESOLVED, now, id)
    if not n then
      log.error("sends: the status callback of send %d could not be stored: %s", id, tostring(err))
      return 503, "not stored, retry later"
    end
    if n == 1 then
      log.info("sends: unknown send %d resolved by a status callback: sent as %s", id, sid)
      row.status = "sent"
      audit(rt, row, "sent", { sid = sid, reconciled = "status callback", delivery_status = status })
      if row.escalation_id then require("switchboard.escalations").settle_from_send(rt, row.escalation_id) end
    end
  end
  key = key or (sid .. ":" .. status)
  local prior = before(status)
  local marks = {}
  for i = 1, #prior do marks[i] = "?" end
  local sql = SQL_RECEIPT:format(#prior > 0 and table.concat(marks, ", ") or "NULL")
  local delivered = status == "delivered" or status == "read"
  local n, err = writer:run(nil, sql, status, code, now, delivered and 1 or 0, now, key, id, key,
    table.unpack(prior))
  if not n then
    log.error("sends: the status callback of send %d could not be stored: %s", id, tostring(err))
    return 503, "not stored, retry later"
  end
  if n == 0 then
    counts.duplicate = counts.duplicate + 1
    return 200, "ignored: a replay, or not a step forward"
  end
  counts.applied = counts.applied + 1
  rt.audit:record({ tenant_id = row.tenant_id, agent_id = row.agent_id, execution_id = row.execution_id,
                    tool = row.tool, action = row.action, args = { to = row.recipient }, decision = "receipt",
                    policies = {}, outcome = status, actor = "twilio",
                    detail = { receipt_for = id, sid = sid, delivery_status = status, error_code = code } })
  return 200, "ok"
end

-- The delivery of a message the runtime sent for ctx's tenant, or nil.
function M.delivery(ctx, sid)
  local rt = runtime_of[ctx]
  local tenant = ctx.tenant_row or ctx.tenant
  if not rt or not tenant or type(sid) ~= "string" then return nil end
  local row = rt.db:row("SELECT id, status, delivery_status, delivery_error, delivered_at, delivery_updated_at,"
    .. " callback_token_hash FROM sends WHERE tenant_id = ? AND sid = ?", tenant.id, sid)
  if not row then return nil end
  return { send_id = row.id, record = row.status, receipts = row.callback_token_hash ~= nil,
           status = row.delivery_status, error_code = row.delivery_error,
           delivered_at = row.delivered_at, updated_at = row.delivery_updated_at }
end

-- }======================================================

return M
