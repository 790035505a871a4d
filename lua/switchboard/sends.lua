-- Write-ahead sends: before a message or a verification code goes out,
-- its record is committed (pending), then marked in_flight right before
-- the request; it ends sent (with Twilio's SID), failed (with Twilio's
-- error) or unknown (the request went out and no answer came back). On
-- start, pending records are sent once and in_flight ones become unknown;
-- unknown messages are reconciled by listing the recipient's messages.
-- Nothing is ever sent twice.
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

local function set_status(db, id, status, sid, code, message)
  assert(db:run("UPDATE sends SET status = ?, sid = ?, error_code = ?, error_message = ?, updated_at = ?"
    .. " WHERE id = ?", status, sid, code, message, db_mod.now(), id))
end

function M.body_hash(text)
  return text and vault.sha256_hex(text) or nil
end

-- After the POST: record the end and the opt-out, if any.
local function settle(db, row, body, err)
  if body then
    set_status(db, row.id, "sent", type(body.sid) == "string" and body.sid or nil, nil, nil)
    return "sent"
  end
  if err.unknown then
    set_status(db, row.id, "unknown", nil, nil, err.message)
    return "unknown"
  end
  set_status(db, row.id, "failed", nil, err.code, err.message)
  if err.code == 21610 then
    db:run("INSERT OR IGNORE INTO opt_outs (tenant_id, recipient, at) VALUES (?, ?, ?)",
      row.tenant_id, row.recipient, db_mod.now())
  end
  return "failed"
end

-- Send through ctx.twilio with a write-ahead record.
-- spec: { recipient, product, path, form, text (the body, for matching) }
-- Returns what client:post returns; sets ctx.outcome and ctx.audit_detail.
function M.post(ctx, spec)
  local rt, db = ctx.rt, ctx.rt.db
  local tenant = ctx.tenant_row
  local request = json.encode({ product = spec.product, path = spec.path, form = spec.form })
  local sealed = directory.seal(rt.master, tenant, FIELD, request)
  local now = db_mod.now()
  local _, id = db:run("INSERT INTO sends (tenant_id, agent_id, escalation_id, tool, action, recipient, request,"
    .. " body_hash, status, created_at, created_unix, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
    tenant.id, ctx.agent and ctx.agent.id, ctx.escalation_id, ctx.tool_name, ctx.action, spec.recipient,
    store.blob(sealed), M.body_hash(spec.text), now, os.time(), now)
  if ctx.send_claim then ctx.send_claim() end
  if not id then
    return nil, { message = "the send could not be recorded, so it was not sent", unknown = false }
  end
  set_status(db, id, "in_flight")
  local body, err = ctx.twilio:post(spec.product, spec.path, spec.form)
  local outcome = settle(db, { id = id, tenant_id = tenant.id, recipient = spec.recipient }, body, err)
  if outcome == "unknown" then M.reconcile_later(rt, id) end
  ctx.outcome = outcome
  ctx.audit_detail = { send_id = id, sid = body and body.sid or nil, status = body and body.status or nil,
                       error_code = err and err.code or nil, outcome = outcome }
  return body, err
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
function M.policy_helpers(db, tenant_id)
  local c = claims[tenant_id] or { total = 0, by = {} }
  return {
    recent_sends = function(recipient, seconds)
      local r = db:row("SELECT count(*) AS n FROM sends WHERE tenant_id = ? AND recipient = ?"
        .. " AND created_unix >= ? AND status != 'failed'", tenant_id, recipient, os.time() - (seconds or 600))
      return (r and r.n or 0) + (c.by[recipient] or 0)
    end,
    sends_today = function()
      local midnight = os.time() - os.time() % 86400
      local r = db:row("SELECT count(*) AS n FROM sends WHERE tenant_id = ? AND created_unix >= ?"
        .. " AND status != 'failed'", tenant_id, midnight)
      return (r and r.n or 0) + c.total
    end,
    opted_out = function(recipient)
      return db:row("SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND recipient = ?", tenant_id, recipient) ~= nil
    end,
  }
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

-- Match an unknown message send against the recipient's messages.
local function reconcile_one(rt, row)
  local req = directory.open(rt.master, directory.tenant_by_id(rt.db, row.tenant_id), FIELD, row.request)
  if not req then return nil, "the record could not be opened" end
  req = json.decode(req)
  if type(req) ~= "table" or not req.path or not req.path:find("/Messages.json", 1, true) then
    return nil, "not a message"
  end
  return with_client(rt, row.tenant_id, function(c)
    local to = req.form and req.form.To
    local items = c:list("api", c:acct("Messages.json"), { To = to, ["DateSent>"] = day_of(row.created_unix),
      PageSize = 100 }, "messages", 500)
    for _, m in ipairs(items or {}) do
      -- the same text, created after this record was (a minute of clock
      -- skew allowed), and not already another record's message
      local created = T.parse_rfc2822(m.date_created)
      if type(m.body) == "string" and M.body_hash(m.body) == row.body_hash
        and created and created >= row.created_unix - 60
        and not rt.db:row("SELECT 1 AS x FROM sends WHERE tenant_id = ? AND sid = ?", row.tenant_id, m.sid) then
        set_status(rt.db, row.id, "sent", m.sid, nil, "reconciled by listing messages")
        return true
      end
    end
    return false
  end)
end

-- Resend a pending record once (it never went out).
local function resend(rt, row)
  local tenant = directory.tenant_by_id(rt.db, row.tenant_id)
  local req = directory.open(rt.master, tenant, FIELD, row.request)
  req = req and json.decode(req)
  if type(req) ~= "table" then
    set_status(rt.db, row.id, "failed", nil, nil, "the record could not be opened")
    return
  end
  local ok, err = with_client(rt, row.tenant_id, function(c)
    set_status(rt.db, row.id, "in_flight")
    local body, perr = c:post(req.product, req.path, req.form)
    settle(rt.db, row, body, perr)
    return true
  end)
  if not ok then set_status(rt.db, row.id, "failed", nil, nil, "not sent after restart: " .. tostring(err)) end
end

-- At start: in_flight → unknown; pending → sent once; unknown → reconciled.
function M.recover(rt)
  local db = rt.db
  local n = db:run("UPDATE sends SET status = 'unknown', error_message = 'interrupted: the request may have"
    .. " gone out', updated_at = ? WHERE status = 'in_flight'", db_mod.now())
  if n and n > 0 then log.warn("sends: %d interrupted sends marked unknown", n) end
  local pending = assert(db:query("SELECT * FROM sends WHERE status = 'pending' ORDER BY id"))
  local unknown = assert(db:query("SELECT * FROM sends WHERE status = 'unknown' AND created_unix >= ? ORDER BY id",
    os.time() - 86400))
  if #pending == 0 and #unknown == 0 then return end
  loop.spawn(function()
    for _, row in ipairs(pending) do resend(rt, row) end
    if #pending > 0 then log.info("sends: %d pending sends from before the restart were sent once", #pending) end
    local found = 0
    for _, row in ipairs(unknown) do
      local ok = reconcile_one(rt, row)
      if ok then found = found + 1 end
    end
    if #unknown > 0 then
      log.info("sends: reconciled %d of %d unknown sends", found, #unknown)
    end
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

return M
