-- Write-ahead sends: before a message or a verification code goes out,
-- its record is committed (in_flight) in the group commit of the db
-- writer, shared with the sends queued meanwhile; it ends sent (with the
-- provider's id for it), failed (with the provider's error) or unknown (the
-- request went out and no answer came back). A send whose record cannot be
-- committed is not sent. On start, in_flight records become unknown (and
-- pending ones, from earlier versions, failed: they never went out);
-- unknown sends are reconciled by their integration's reconcile hook; every
-- change recovery makes is written to the audit trail. Nothing is ever
-- sent twice. Tools reach this through ctx.send, which the pipeline owns.
local loop = require("core.loop")
local vault = require("core.vault")
local json = require("switchboard.json")
local log = require("switchboard.log")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")
local integrations = require("switchboard.integrations")
local connections = require("switchboard.connections")
local store = require("switchboard.store.sends")

local M = {}

local FIELD = "send.request"

-- What a pending record becomes at start: it never went out.
M.NOT_SENT = "not sent: interrupted before the request"

-- The statements of the call path (held by tests against their query plans).
M.SQL = store.SQL

-- {======================================================
-- The daily count: sends of a tenant since midnight (UTC) that did not
-- fail, read once a day from the store (a range of sends_tenant_created)
-- and then kept in step with the commits: +1 in the step that commits a
-- record, -1 in the step that commits its failure. db -> tenant -> { day, n }
-- =======================================================

local daily = setmetatable({}, { __mode = "k" })

local function midnight(t) return t - t % 86400 end

local function day_count(db, tenant_id)
  -- PostgreSQL: other nodes commit sends too; the count is read each time
  if db_mod.is_pg(db) then
    local n, err = store.since(db, tenant_id, midnight(os.time()))
    if not n then error("the send records could not be read: " .. tostring(err), 0) end
    return n
  end
  local per = daily[db]
  if not per then per = {} daily[db] = per end
  local day = midnight(os.time())
  local c = per[tenant_id]
  if not c or c.day ~= day then
    local n, err = store.since(db, tenant_id, day)
    if not n then error("the send records could not be read: " .. tostring(err), 0) end
    c = { day = day, n = n }
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
  return store.settle(db, id, status, sid, code, message)
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
  return store.settle_later(db, row.id, status, sid, code, message, function(n, err)
    if not n then
      if status == "failed" then counted(db, row.tenant_id, row.created_unix, 1) end
      log.error("sends: send %d ended %s but that could not be stored (%s); it stays in_flight and is"
        .. " marked unknown at the next start", row.id, status, tostring(err))
    end
  end)
end

function M.body_hash(text)
  return text and vault.sha256_hex(text) or nil
end

-- What a template send is matched by: its SID and variables (the listed
-- message shows the rendered text, computed again at reconciliation).
function M.template_hash(sid, variables)
  return "template:" .. vault.sha256_hex(sid .. "\n" .. (variables or ""))
end

-- After the request: record the end and the opt-out, if any. ref: the
-- provider's id for what was sent.
local function settle(db, row, body, err, ref)
  if body then
    settle_status(db, row, "sent", type(ref) == "string" and ref or nil, nil, nil)
    return "sent"
  end
  if err.unknown then
    settle_status(db, row, "unknown", nil, nil, err.message)
    return "unknown"
  end
  if err.opted_out then
    -- in the same commit as the failure
    store.opt_out_later(db, row.tenant_id, row.recipient, function(n, oerr)
      if not n then log.error("sends: the opt-out of a recipient could not be stored: %s", tostring(oerr)) end
    end)
  end
  settle_status(db, row, "failed", nil, err.code, err.message)
  return "failed"
end

local function not_sent(outcome, message, detail)
  detail = detail or {}
  detail.outcome, detail.error = outcome, message
  return nil, { message = message, unknown = false, not_sent = true, cancelled = outcome == "cancelled" },
    { outcome = outcome, detail = detail }
end

M.STORAGE_UNAVAILABLE = "Not sent: storage unavailable. The send could not be recorded before going out, so"
  .. " nothing was sent"
M.CANCELLED = "Not sent: the call was cancelled or passed its deadline before the request went out"
M.NOT_SENT_CANCELLED = "not sent: the call was cancelled before the request"

-- One send with a write-ahead record: what ctx.send does (the pipeline
-- makes ctx.send for a call whose tool declares `sends`).
-- call: { tenant (row), agent, escalation_id, tool, action, execution_id,
--         call_id, recipient (from the declaration), integration,
--         cancelled (function), release (the recipient claim's release) }
-- spec: { request (a table kept sealed in the record, for reconciliation),
--         text (what was sent, matched by its hash) or hash,
--         callback (true: give post a status-callback URL, when receipts are on),
--         ref (the field of the answer that is the provider's id, default "id"),
--         post = function(info) → body or nil, err } where info is
--         { send_id, callback_url } and err { message, code, unknown, opted_out }.
-- Returns body or nil, err, and { outcome, detail } (the audit's account of
-- the send: send_id, ref, outcome).
function M.send(rt, call, spec)
  local db = rt.db
  local tenant = call.tenant
  local function release() if call.release then call.release() end end
  -- the agent was answered already (deadline or cancel): nothing goes out
  if call.cancelled and call.cancelled() then
    release()
    log.info("sends: %s call %s cancelled before its send: not sent", call.tool, tostring(call.call_id))
    return not_sent("cancelled", M.CANCELLED)
  end
  -- a record written inside an open transaction is not durable until
  -- someone commits it: never send on one
  if db:in_transaction() then
    release()
    log.error("sends: a %s send was refused: a database transaction is open, so its record would not be"
      .. " durable", call.tool)
    return not_sent("failed", M.STORAGE_UNAVAILABLE, { storage = "transaction open" })
  end
  local sealed = directory.seal(rt.master, tenant, FIELD, json.encode(spec.request or {}))
  local now, created = db_mod.now(), os.time()
  -- a send that takes status callbacks carries a token of its own (only
  -- its hash is stored; the sealed request above never holds it)
  local base = spec.callback and M.callback_base(rt, call.integration)
  local token = base and vault.base64url(vault.random(32)) or nil
  local hash = spec.hash or M.body_hash(spec.text)
  -- one commit before the request, shared with the sends queued meanwhile:
  -- the record is in_flight from the start (a record that never went out
  -- because the process died in between is reconciled as unknown)
  local id, err = store.insert(db, {
    tenant_id = tenant.id, agent_id = call.agent and call.agent.id, escalation_id = call.escalation_id,
    tool = call.tool, action = call.action, recipient = call.recipient, request = sealed, body_hash = hash,
    now = now, created_unix = created, callback_token_hash = token and vault.sha256_hex(token) or nil,
    execution_id = call.execution_id, integration = call.integration,
    node = db_mod.is_pg(db) and require("switchboard.cluster").NODE or nil,
  }, function(rowid)
    -- the claim ends in the same step that commits the record (or fails to)
    release()
    if rowid then counted(db, tenant.id, created, 1) end
  end)
  if not id then
    log.error("sends: the write-ahead record of a %s send for tenant %d could not be stored, so it was not"
      .. " sent: %s", call.tool, tenant.id, tostring(err))
    return not_sent("failed", M.STORAGE_UNAVAILABLE, { storage = tostring(err) })
  end
  local row = { id = id, tenant_id = tenant.id, recipient = call.recipient, created_unix = created }
  -- the commit took a loop turn: a call given up meanwhile sends nothing
  if call.cancelled and call.cancelled() then
    log.info("sends: %s call %s cancelled before its send: not sent", call.tool, tostring(call.call_id))
    settle_status(db, row, "failed", nil, nil, M.NOT_SENT_CANCELLED)
    return not_sent("cancelled", M.CANCELLED, { send_id = id })
  end
  local info = { send_id = id, callback_url = token and ("%s/%d/%s"):format(base, id, token) or nil }
  local body, perr = spec.post(info)
  if not body and type(perr) ~= "table" then perr = { message = tostring(perr or "the send failed") } end
  local ref = body and body[spec.ref or "id"]
  local outcome = settle(db, row, body, perr, ref)
  if outcome == "unknown" then M.reconcile_later(rt, id) end
  return body, perr, { outcome = outcome, detail = { send_id = id, outcome = outcome } }
end

-- Write calls that passed the policies and have no send record yet (their
-- handler may wait on the provider before it sends): counted with the records, so
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

-- {======================================================
-- Limits exact across nodes (PostgreSQL). The in-process claims above
-- count the calls of one node; with several nodes on one database, a
-- call that sends takes the tenant's send lock before its policies count
-- (recent_sends, sends_today) and keeps it until its write-ahead record is
-- committed (or it ends without one): between two nodes, as between two
-- calls of one node, the second counts the first's record. The lock is a
-- session advisory lock (pg_advisory_lock(class, tenant id)) taken on a
-- connection of its own (one of LOCK_SLOTS per node, outside the pool, so
-- that a call waiting for it holds none of the pool's); the calls of one
-- node queue for their slot in order. A node that dies releases its locks
-- with its connections. On SQLite (one node, queries that do not wait)
-- lock() does nothing.
-- =======================================================

M.LOCK_SLOTS = 4
M.LOCK_CLASS = 0x5342   -- the first key of the two-key advisory locks

local lockers = setmetatable({}, { __mode = "k" })

local function unlock_noop() end

-- Take the tenant's send lock: a release function (idempotent, callable
-- from anywhere), or nil, err when the store cannot be reached.
function M.lock(db, tenant_id)
  if not db_mod.is_pg(db) then return unlock_noop end
  local slots = lockers[db]
  if not slots then slots = {} lockers[db] = slots end
  local i = tenant_id % M.LOCK_SLOTS + 1
  local slot = slots[i]
  if not slot then slot = { waiters = {} } slots[i] = slot end
  local function give_back()
    slot.busy = false
    while #slot.waiters > 0 do
      if loop.wake(table.remove(slot.waiters, 1)) then return end
    end
  end
  while slot.busy do
    slot.waiters[#slot.waiters + 1] = coroutine.running()
    loop.wait()
  end
  slot.busy = true
  local ok, err = pcall(function()
    if slot.conn and slot.conn:status() ~= "idle" then slot.conn:close() slot.conn = nil end
    if not slot.conn then
      local c, cerr = require("core.pg").connect(db.conninfo, db.connect_opts)
      if not c then error("postgresql: " .. tostring(cerr), 0) end
      slot.conn = c
    end
    local r, qerr = slot.conn:query("SELECT pg_advisory_lock($1, $2)", M.LOCK_CLASS, tenant_id)
    if not r then
      slot.conn:close()
      slot.conn = nil
      error(tostring(qerr), 0)
    end
  end)
  if not ok then
    give_back()
    return nil, err
  end
  local released = false
  return function()
    if released then return end
    released = true
    loop.spawn(function()
      local c = slot.conn
      local r = c and c:query("SELECT pg_advisory_unlock($1, $2)", M.LOCK_CLASS, tenant_id)
      -- a lock that cannot be given back goes with its connection
      if not r and c then c:close() if slot.conn == c then slot.conn = nil end end
      give_back()
    end)
  end
end

-- }======================================================

-- What recipient and volume policies may ask (all scoped to the tenant).
-- A count that cannot be read raises: the policy then fails, and a
-- failing policy denies (a limit never passes for want of a count).
function M.policy_helpers(db, tenant_id)
  local c = claims[tenant_id] or { total = 0, by = {} }
  return {
    recent_sends = function(recipient, seconds)
      local n, err = store.recent(db, tenant_id, recipient, os.time() - (seconds or 600))
      if not n then error("the send records could not be read: " .. tostring(err), 0) end
      return n + (c.by[recipient] or 0)
    end,
    sends_today = function()
      return day_count(db, tenant_id) + c.total
    end,
    opted_out = function(recipient)
      local yes, err = store.opted_out(db, tenant_id, recipient)
      if yes == nil then error("the opt-outs could not be read: " .. tostring(err), 0) end
      return yes
    end,
  }
end

-- call.sent_before(recipient) for policies: has the tenant sent to this
-- recipient before (a send the provider accepted)? Raises when it cannot tell.
function M.sent_before(db, tenant_id)
  return function(recipient)
    local yes, err = store.sent_before(db, tenant_id, recipient)
    if yes == nil then error("the send records could not be read: " .. tostring(err), 0) end
    return yes
  end
end

-- The integration a send went through: its record's, or (records from
-- before the column) the integration of its tool.
local function integration_of(rt, row)
  if row.integration then return row.integration end
  local tool = rt.registry and rt.registry.tools[row.tool]
  return tool and tool.connection
end

-- A client for a tenant's stored connection (recovery runs outside calls).
local function with_client(rt, integration, tenant, fn)
  local conn = connections.get(rt.db, integration, tenant.id)
  if not conn then return nil, "the tenant's connection was removed" end
  local ok, res = pcall(function()
    return table.pack(connections.with_client(rt, integration, tenant, conn, fn))
  end)
  if not ok then return nil, tostring(res) end
  if not res[1] then return nil, res[2] end
  return table.unpack(res, 2, res.n)
end

-- An audit record of what recovery or reconciliation did to a send: each
-- send that may have reached the provider has one, whatever happened to the
-- record of its call.
local function audit(rt, row, outcome, detail)
  detail.send_id, detail.outcome = row.id, outcome
  rt.audit:record({ tenant_id = row.tenant_id, agent_id = row.agent_id, execution_id = "recovery",
                    tool = row.tool, action = row.action, args = { to = row.recipient }, decision = "recovery",
                    policies = {}, outcome = outcome, detail = detail, actor = "recovery" })
end

-- Look for an unknown send at the provider, through its integration's
-- reconcile hook (integrations/<name>/reconcile.lua):
--   find(client, request, row, helpers) → the provider's id for it, false
--   (not found) or nil, err ("not reconcilable" for a send it cannot look for)
-- helpers: { body_hash(text), claimed(ref) (another record has it) }.
-- Returns true (now sent), false (not found) or nil, err.
local function reconcile_one(rt, row)
  local name = integration_of(rt, row)
  local pkg = name and integrations.get(name)
  local hook = pkg and pkg.manifest.reconcile and integrations.module(pkg, pkg.manifest.reconcile)
  if not hook then return nil, M.NOT_RECONCILABLE end
  local tenant = directory.tenant_by_id(rt.db, row.tenant_id)
  local req = directory.open(rt.master, tenant, FIELD, row.request)
  if not req then return nil, "the record could not be opened" end
  req = json.decode(req)
  if type(req) ~= "table" then return nil, "the record could not be read" end
  local helpers = {
    body_hash = M.body_hash,
    claimed = function(ref) return store.has_sid(rt.db, row.tenant_id, ref) == true end,
  }
  return with_client(rt, name, tenant, function(c)
    local ref, err = hook.find(c, req, row, helpers)
    if not ref then return ref, err end
    local ok, serr = set_status(rt.db, row.id, "sent", ref, nil, "reconciled with the provider")
    if not ok then return nil, "the match could not be stored: " .. tostring(serr) end
    audit(rt, row, "sent", { sid = ref, reconciled = "found at the provider" })
    if row.escalation_id then require("switchboard.escalations").settle_from_send(rt, row.escalation_id) end
    return true
  end)
end
M.NOT_RECONCILABLE = "not reconcilable"

local function stored(ok, row)
  if not ok then log.error("sends: recovery could not update send %d; it is left for the next start", row.id) end
  return ok
end

-- Reconcile unknown sends (rows) in a coroutine of their own; escalations
-- settled from their sends.
local function reconcile_all(rt, unknown)
  local escalations = require("switchboard.escalations")
  loop.spawn(function()
    local found = 0
    for _, row in ipairs(unknown) do
      local ok, res, err = pcall(reconcile_one, rt, row)
      if ok and res then
        found = found + 1
      elseif not ok or res == false then
        if not ok then log.warn("sends: reconciling send %d failed: %s", row.id, tostring(res)) end
        -- a provider may list a message only once it is created: look once more later
        M.reconcile_later(rt, row.id)
      elseif err ~= M.NOT_RECONCILABLE then
        log.warn("sends: send %d cannot be reconciled: %s", row.id, tostring(err))
      end
      if row.escalation_id then escalations.settle_from_send(rt, row.escalation_id) end
    end
    log.info("sends: reconciled %d of %d unknown sends", found, #unknown)
  end)
end

M.INTERRUPTED = "interrupted: the request may have gone out"

-- {======================================================
-- Several nodes (PostgreSQL): each send is its node's; a node renews its
-- lease (its heartbeat) every lease_seconds / 3 and, every lease_seconds
-- / 2, takes over the open sends of the nodes whose lease expired: in one
-- transaction with FOR UPDATE SKIP LOCKED (two nodes never take one send),
-- in_flight becomes unknown, pending failed, and each is audited and
-- reconciled with its provider, never sent again.
-- =======================================================

function M.take_over(rt)
  local db = rt.db
  local lease = rt.cfg.cluster.lease_seconds
  local node = require("switchboard.cluster").NODE
  local now = os.time()
  local rows, err = store.take_over(db, node, math.floor(now - lease), 200, M.INTERRUPTED, M.NOT_SENT)
  if not rows then
    log.warn("sends: the sends of stopped nodes could not be taken over now: %s", tostring(err))
    return nil, err
  end
  if #rows == 0 then return 0 end
  local unknown, open = {}, 0
  for _, row in ipairs(rows) do
    local was = row.node
    row.audited = row.audited == true
    if row.status == "in_flight" then
      row.status = "unknown"
      audit(rt, row, "unknown", { error = M.INTERRUPTED, recovered = "in_flight on a stopped node", node = was })
    elseif row.status == "pending" then
      audit(rt, row, "failed", { error = M.NOT_SENT, recovered = "pending on a stopped node", node = was })
    elseif not row.audited then
      -- its call's audit record was lost with its node
      audit(rt, row, row.status, { sid = row.sid, error_code = row.error_code, error = row.error_message,
                                   recovered = "its call's audit record was lost with its node", node = was })
    end
    if row.status == "unknown" then unknown[#unknown + 1] = row end
    if row.status == "unknown" or row.status == "pending" then open = open + 1 end
    row.node = node
  end
  log.warn("sends: took over %d sends of stopped nodes (%d open)", #rows, open)
  reconcile_all(rt, unknown)
  if #rows == 200 then loop.spawn(function() M.take_over(rt) end) end
  return #rows
end

local function start_leases(rt)
  local db = rt.db
  local lease = rt.cfg.cluster.lease_seconds
  local node = require("switchboard.cluster").NODE
  local function beat()
    local ok, err = store.heartbeat(db, node, os.time())
    if not ok then log.warn("sends: this node's lease could not be renewed: %s", tostring(err)) end
    return ok
  end
  beat()
  rt.lease_timer = loop.timer(lease / 3, lease / 3, function()
    if rt.draining then return end
    loop.spawn(beat)
  end)
  rt.takeover_timer = loop.timer(lease / 2, lease / 2, function()
    if rt.draining or rt.taking_over then return end
    rt.taking_over = true
    loop.spawn(function()
      pcall(M.take_over, rt)
      -- approvals whose node stopped before their send record (or result)
      local ok, err = pcall(require("switchboard.escalations").recover, rt, math.floor(os.time() - lease))
      if not ok then log.warn("sends: the approvals of stopped nodes could not be recovered: %s", tostring(err)) end
      pcall(store.forget_nodes, db, os.time() - 10 * lease)
      rt.taking_over = false
    end)
  end)
end

-- }======================================================

-- At start: in_flight → unknown; pending → failed (never sent);
-- approved escalations settled from their send; unknown → reconciled.
-- On PostgreSQL, only the sends of stopped nodes (their lease expired),
-- now and every lease_seconds / 2 (M.take_over).
function M.recover(rt)
  local db = rt.db
  if db_mod.is_pg(db) then
    start_leases(rt)
    require("switchboard.escalations").recover(rt, math.floor(os.time() - rt.cfg.cluster.lease_seconds))
    M.take_over(rt)
    return
  end
  local since = os.time() - 2 * 86400
  -- send records whose call left no audit record (the process died between
  -- the send's end and the audit commit) get one now
  local last = store.last_created(db)
  if last then since = math.min(since, last - 86400) end
  for _, row in ipairs(assert(store.unaudited(db, since))) do
    audit(rt, row, row.status, { sid = row.sid, error_code = row.error_code, error = row.error_message,
                                 recovered = "its call's audit record was lost in a restart" })
  end
  local interrupted = assert(store.with_status(db, "in_flight"))
  local why = "interrupted: the request may have gone out"
  for _, row in ipairs(interrupted) do
    -- a record that cannot be changed now stays as it is for the next start
    if stored(set_status(db, row.id, "unknown", nil, nil, why), row) then
      row.status = "unknown"
      audit(rt, row, "unknown", { error = why, recovered = "in_flight at start" })
    end
  end
  if #interrupted > 0 then log.warn("sends: %d interrupted sends marked unknown", #interrupted) end
  local pending = assert(store.with_status(db, "pending"))
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
  local unknown = assert(store.with_status(db, "unknown", os.time() - 86400))
  if #unknown > 0 then reconcile_all(rt, unknown) end
end

M.RECONCILE_DELAY = 60

-- An unknown send is looked for again a minute later (a provider may list
-- a message only once it is created), not only at the next start.
function M.reconcile_later(rt, id, delay)
  loop.spawn(function()
    loop.sleep(delay or M.RECONCILE_DELAY)
    if rt.draining then return end
    local row = store.get_unknown(rt.db, id)
    if not row then return end
    local ok, err = pcall(reconcile_one, rt, row)
    if not ok then log.warn("sends: reconciling send %d failed: %s", id, tostring(err)) end
  end)
end

-- {======================================================
-- Delivery receipts: status callbacks.
--
-- With http.public_url set, a send whose tool asks for it carries a status
-- callback URL <public_url>/<integration>/status/<send id>/<token>, the
-- token 32 random bytes of its own (the record keeps only its SHA-256,
-- compared in constant time): the token is what authenticates a callback.
-- The integration's receipts module reads a callback (parse) and orders
-- its statuses (RANK, DELIVERED, can_follow). A receipt moves the send's
-- delivery status forward only (a replay, a retry or a late one changes
-- nothing), keeps the error code, closes an unknown outcome at once (the
-- callback names the provider's id) and is written to the audit trail in
-- the execution of the call that sent it.
-- =======================================================

-- The status callback's base URL for an integration, or nil (receipts off).
function M.callback_base(rt, integration)
  local url = rt.cfg and rt.cfg.http and rt.cfg.http.public_url
  if not url or not integration then return nil end
  local pkg = integrations.get(integration)
  if not (pkg and pkg.manifest.receipts) then return nil end
  return ("%s/%s/status"):format((url:gsub("/+$", "")), integration)
end

-- The statuses a receipt of `status` may follow: those ranked before it
-- (and that the package's can_follow allows, when it has one).
local function before(r, status)
  local out = {}
  for st, rank in pairs(r.RANK) do
    if rank < r.RANK[status] and (not r.can_follow or r.can_follow(st, status)) then
      out[#out + 1] = st
    end
  end
  table.sort(out)
  return out
end

local NO_TOKEN = vault.sha256_hex("no callback token")

M.RESOLVED = "reconciled by a status callback"
M.SETTLE_WAIT = 10

local counts = { applied = 0, duplicate = 0, refused = 0 }
M.receipt_counts = counts

local function refuse(status, why, id)
  counts.refused = counts.refused + 1
  log.warn("sends: a status callback for send %s was refused: %s", tostring(id), why)
  return status, why
end

-- One status callback. integration: the URL's; id: its send id; token: its
-- token; form: the decoded body; headers: lowercase names. Returns an HTTP
-- status and a short text (nothing secret in either).
function M.receipt(rt, integration, id, token, form, headers)
  local db = rt.db
  local pkg = integrations.get(integration)
  local r = pkg and pkg.manifest.receipts and integrations.module(pkg, pkg.manifest.receipts)
  local row = store.get(db, id)
  -- the same work and the same answer for a send that does not exist and a
  -- wrong token: a prober learns nothing
  local ok = vault.equal(vault.sha256_hex(token), row and row.callback_token_hash or NO_TOKEN)
  if not (r and row and row.callback_token_hash and ok and integration_of(rt, row) == integration) then
    return refuse(404, "no such callback", id)
  end
  local conn = connections.get(db, integration, row.tenant_id)
  local got, status_code, why = r.parse(form, headers or {}, conn)
  if not got then return refuse(status_code, why, id) end
  local sid, status, code = got.ref, got.status, got.error_code
  -- the provider may call back before its answer to the request has been
  -- read: wait until the send has settled
  local waited = 0
  while row.status == "in_flight" and waited < M.SETTLE_WAIT do
    loop.sleep(0.05)
    waited = waited + 0.05
    row = store.get(db, id)
  end
  if row.status == "in_flight" then return 503, "the send has not settled yet, retry later" end
  if row.sid and row.sid ~= sid then return refuse(409, "the callback's id is not the message of this send", id) end
  if row.status == "failed" or row.status == "pending" then
    return refuse(409, "this send did not reach the provider", id)
  end
  if not row.sid and store.sid_elsewhere(db, sid, id) then
    return refuse(409, "the callback's id is another send's message", id)
  end
  -- an unknown outcome ends here: the message exists at the provider
  if row.status == "unknown" then
    local n, err = store.resolve(db, id, sid, M.RESOLVED)
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
  local key = got.key or (sid .. ":" .. status)
  local prior = before(r, status)
  local n, err = store.receipt(db, id, status, code, r.DELIVERED[status] == true, key, prior)
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
                    policies = {}, outcome = status, actor = integration,
                    detail = { receipt_for = id, sid = sid, delivery_status = status, error_code = code } })
  return 200, "ok"
end

-- The delivery of a message the runtime sent for the tenant (by the
-- provider's id for it), or nil: what ctx.delivery(ref) answers.
function M.delivery(rt, tenant, sid)
  if not tenant or type(sid) ~= "string" then return nil end
  local row = store.delivery(rt.db, tenant.id, sid)
  if not row then return nil end
  return { send_id = row.id, record = row.status, receipts = row.callback_token_hash ~= nil,
           status = row.delivery_status, error_code = row.delivery_error,
           delivered_at = row.delivered_at, updated_at = row.delivery_updated_at }
end

-- }======================================================

return M
