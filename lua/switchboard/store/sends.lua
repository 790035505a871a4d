-- The write-ahead send records (sends) and the opt-outs. Every function
-- takes the db handle first and returns values, or nil, err when the store
-- failed; a row that is not there is nil. The statements of the call path
-- are in SQL (tests hold each against its query plan: none may scan the
-- table); the writes of the call path go through the db writer (group
-- commit on SQLite, a statement each on PostgreSQL).
local blob = require("core.store").blob
local db_mod = require("switchboard.db")

local M = {}

M.SQL = {
  insert = "INSERT INTO sends (tenant_id, agent_id, escalation_id, tool, action, recipient, request, body_hash,"
    .. " status, created_at, created_unix, updated_at, callback_token_hash,"
    .. " execution_id, integration, node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'in_flight', ?, ?, ?, ?, ?, ?, ?)",
  settle = "UPDATE sends SET status = ?, sid = ?, error_code = ?, error_message = ?, updated_at = ? WHERE id = ?",
  opt_out = "INSERT INTO opt_outs (tenant_id, recipient, at) VALUES (?, ?, ?)"
    .. " ON CONFLICT (tenant_id, recipient) DO NOTHING",
  opted_out = "SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND recipient = ?",
  recent = "SELECT count(*) AS n FROM sends WHERE tenant_id = ? AND recipient = ? AND created_unix >= ?"
    .. " AND status != 'failed'",
  today = "SELECT count(*) AS n FROM sends WHERE tenant_id = ? AND created_unix >= ? AND status != 'failed'",
  by_sid = "SELECT 1 AS x FROM sends WHERE tenant_id = ? AND sid = ?",
}
local SQL = M.SQL

-- {======================================================
-- The call path
-- =======================================================

-- Record a send (in_flight) through the writer and wait for its commit.
-- r: { tenant_id, agent_id, escalation_id, tool, action, recipient,
-- request (sealed string), body_hash, now, created_unix,
-- callback_token_hash, execution_id, integration, node }. on_commit(id | nil,
-- err) runs in the step of the commit. Returns the id or nil, err.
function M.insert(db, r, on_commit)
  return db_mod.writer(db):insert(on_commit, SQL.insert, r.tenant_id, r.agent_id, r.escalation_id, r.tool,
    r.action, r.recipient, blob(r.request), r.body_hash, r.now, r.created_unix, r.now, r.callback_token_hash,
    r.execution_id, r.integration, r.node)
end

-- Set a send's end at once (outside the call path). Returns the change
-- count or nil, err.
function M.settle(db, id, status, sid, code, message)
  return db:run(SQL.settle, status, sid, code, message, db_mod.now(), id)
end

-- Set a send's end with the writer's next commit, without waiting:
-- on_commit(count | nil, err) is told.
function M.settle_later(db, id, status, sid, code, message, on_commit)
  return db_mod.writer(db):later(on_commit, SQL.settle, status, sid, code, message, db_mod.now(), id)
end

-- Store an opt-out with the writer's next commit (kept when there is one).
function M.opt_out_later(db, tenant_id, recipient, on_commit)
  return db_mod.writer(db):later(on_commit, SQL.opt_out, tenant_id, recipient, db_mod.now())
end

-- Whether recipient opted out of the tenant's sends.
function M.opted_out(db, tenant_id, recipient)
  local r, err = db:row(SQL.opted_out, tenant_id, recipient)
  if r == nil and err then return nil, err end
  return r ~= nil
end

-- The tenant's sends to recipient since created_unix since that did not fail.
function M.recent(db, tenant_id, recipient, since)
  local r, err = db:row(SQL.recent, tenant_id, recipient, since)
  if not r then return nil, err end
  return r.n
end

-- The tenant's sends since created_unix since that did not fail.
function M.since(db, tenant_id, since)
  local r, err = db:row(SQL.today, tenant_id, since)
  if not r then return nil, err end
  return r.n
end

-- Whether a send of the tenant has the provider's id sid.
function M.has_sid(db, tenant_id, sid)
  local r, err = db:row(SQL.by_sid, tenant_id, sid)
  if r == nil and err then return nil, err end
  return r ~= nil
end

-- Whether another send (not id) has the provider's id sid.
function M.sid_elsewhere(db, sid, id)
  local r, err = db:row("SELECT 1 AS x FROM sends WHERE sid = ? AND id != ?", sid, id)
  if r == nil and err then return nil, err end
  return r ~= nil
end

-- Whether the tenant sent to recipient before (a send the provider accepted).
function M.sent_before(db, tenant_id, recipient)
  local r, err = db:row("SELECT 1 AS x FROM sends WHERE tenant_id = ? AND recipient = ? AND sid IS NOT NULL LIMIT 1",
    tenant_id, recipient)
  if r == nil and err then return nil, err end
  return r ~= nil
end

-- }======================================================

-- {======================================================
-- Recovery and reconciliation
-- =======================================================

function M.get(db, id)
  return db:row("SELECT * FROM sends WHERE id = ?", id)
end

-- Send id if it is unknown, else nil.
function M.get_unknown(db, id)
  return db:row("SELECT * FROM sends WHERE id = ? AND status = 'unknown'", id)
end

-- The newest record's created_unix, or nil.
function M.last_created(db)
  local r, err = db:row("SELECT max(created_unix) AS t FROM sends")
  if not r then return nil, err end
  return r.t
end

-- The sends of a status (in id order), since created_unix since when given.
function M.with_status(db, status, since)
  if since then
    return db:query("SELECT * FROM sends WHERE status = ? AND created_unix >= ? ORDER BY id", status, since)
  end
  return db:query("SELECT * FROM sends WHERE status = ? ORDER BY id", status)
end

-- Send records since created_unix since that ended (sent, failed,
-- unknown) and whose call left no audit record, in id order.
local UNAUDITED = {
  sqlite = "SELECT s.* FROM sends s WHERE s.created_unix >= ? AND s.status IN ('sent', 'failed', 'unknown')"
    .. " AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE (CASE WHEN json_valid(a.detail) THEN"
    .. " json_extract(a.detail, '$.send_id') END) = +s.id) ORDER BY s.id",  -- +: no affinity, so the index serves
  pg = "SELECT s.* FROM sends s WHERE s.created_unix >= ? AND s.status IN ('sent', 'failed', 'unknown')"
    .. " AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE (sb_json(a.detail) ->> 'send_id') = s.id::text)"
    .. " ORDER BY s.id",
}
M.UNAUDITED = UNAUDITED

function M.unaudited(db, since, live_since)
  if live_since then
    -- several nodes: only the sends of nodes whose lease expired
    return db:query(UNAUDITED.pg:gsub(" ORDER BY s.id$", " AND (s.node IS NULL OR s.node NOT IN"
      .. " (SELECT id FROM nodes WHERE heartbeat_unix >= ?)) ORDER BY s.id"), since, live_since)
  end
  return db:query(UNAUDITED[db_mod.dialect(db)], since)
end

-- {======================================================
-- Owners and leases (several nodes on PostgreSQL)
-- =======================================================

-- Renew node's lease (its heartbeat: now, a unix time).
function M.heartbeat(db, node, now)
  return db:run("INSERT INTO nodes (id, heartbeat_unix, started_at) VALUES (?, ?, ?)"
    .. " ON CONFLICT (id) DO UPDATE SET heartbeat_unix = excluded.heartbeat_unix", node, now, db_mod.now())
end

-- Forget the nodes whose lease expired before since and that own no open send.
function M.forget_nodes(db, since)
  return db:run("DELETE FROM nodes WHERE heartbeat_unix < ? AND NOT EXISTS (SELECT 1 FROM sends s"
    .. " WHERE s.node = nodes.id AND s.status IN ('pending', 'in_flight', 'unknown'))", since)
end

-- Take over, for node, at most limit open sends (pending, in_flight,
-- unknown) whose owner's lease ended before live_since (or that have no
-- owner), in one transaction: rows another node is taking over at the same
-- time are skipped (FOR UPDATE SKIP LOCKED), never taken twice. Each taken
-- send is now node's: in_flight becomes unknown (the request may have gone
-- out), pending failed (it never went out, with not_sent as its error);
-- sent and failed ones only change owner. Returns the rows as they were
-- (status before), each with audited (it has its audit record), or nil, err.
function M.take_over(db, node, live_since, limit, why_unknown, not_sent)
  local taken
  local ok, err = db_mod.transaction(db, function()
    local rows, qerr = db:query("SELECT s.*, EXISTS (SELECT 1 FROM audit_log a WHERE (sb_json(a.detail) ->> 'send_id')"
      .. " = s.id::text) AS audited FROM sends s"
      .. " WHERE (s.node IS NULL OR s.node <> ?) AND (s.node IS NULL OR s.node NOT IN"
      .. " (SELECT id FROM nodes WHERE heartbeat_unix >= ?)) ORDER BY s.id LIMIT ? FOR UPDATE OF s SKIP LOCKED",
      node, live_since, limit)
    if not rows then return nil, qerr end
    local now = db_mod.now()
    for _, r in ipairs(rows) do
      local status, message = r.status, r.error_message
      if status == "in_flight" then status, message = "unknown", why_unknown
      elseif status == "pending" then status, message = "failed", not_sent end
      local n, uerr = db:run("UPDATE sends SET node = ?, status = ?, error_message = ?, updated_at = ? WHERE id = ?",
        node, status, message, now, r.id)
      if not n then return nil, uerr end
    end
    taken = rows
    return true
  end)
  if not ok then return nil, err end
  return taken
end

-- }======================================================

-- }======================================================

-- {======================================================
-- Delivery receipts
-- =======================================================

local SQL_RECEIPT = "UPDATE sends SET delivery_status = ?, delivery_error = coalesce(?, delivery_error),"
  .. " delivery_updated_at = ?, delivered_at = CASE WHEN ? THEN coalesce(delivered_at, ?) ELSE delivered_at END,"
  .. " callback_key = ? WHERE id = ? AND (callback_key IS NULL OR callback_key != ?)"
  .. " AND (delivery_status IS NULL OR delivery_status IN (%s))"
local SQL_RESOLVE = "UPDATE sends SET status = 'sent', sid = ?, error_message = ?, updated_at = ?"
  .. " WHERE id = ? AND status = 'unknown'"

-- An unknown send found sent (as sid) by a receipt, through the writer:
-- the change count (0: it was not unknown any more) or nil, err.
function M.resolve(db, id, sid, message)
  return db_mod.writer(db):run(nil, SQL_RESOLVE, sid, message, db_mod.now(), id)
end

-- Move a send's delivery status forward to status (from one of prior, or
-- none yet), unless key was the last callback applied: the change count or
-- nil, err.
function M.receipt(db, id, status, code, delivered, key, prior)
  local marks = {}
  for i = 1, #prior do marks[i] = "?" end
  local sql = SQL_RECEIPT:format(#prior > 0 and table.concat(marks, ", ") or "NULL")
  local now = db_mod.now()
  local flag = delivered and 1 or 0
  if db_mod.is_pg(db) then flag = delivered and "true" or "false" end
  return db_mod.writer(db):run(nil, sql, status, code, now, flag, now, key, id, key, table.unpack(prior))
end

-- The delivery of the tenant's message sid: the send's id, status, receipt
-- columns, or nil.
function M.delivery(db, tenant_id, sid)
  return db:row("SELECT id, status, delivery_status, delivery_error, delivered_at, delivery_updated_at,"
    .. " callback_token_hash FROM sends WHERE tenant_id = ? AND sid = ?", tenant_id, sid)
end

-- }======================================================

return M
