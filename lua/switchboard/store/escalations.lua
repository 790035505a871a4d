-- The escalations' records: calls a policy held or escalated, their
-- decision and the result of an approved run. Every function takes the db
-- handle first and returns values, or nil, err when the store failed; a
-- row that is not there is nil. Rows come back with result decoded (the
-- summary table, or nil) and result_bytes (its stored size, for page
-- bounds); arguments stay the sealed string they were given as.
local json = require("switchboard.json")
local db_mod = require("switchboard.db")
local blob = require("core.store").blob

-- The approved escalation that is not settled, per store (JSON functions).
local UNSETTLED = {
  sqlite = "SELECT * FROM escalations WHERE id = ? AND status = 'approved' AND (result IS NULL"
    .. " OR (json_valid(result) AND json_extract(result, '$.data.outcome') = 'unknown'))",
  pg = "SELECT * FROM escalations WHERE id = ? AND status = 'approved' AND (result IS NULL"
    .. " OR (sb_json(result) #>> '{data,outcome}') = 'unknown')",
}

local M = {}

M.KINDS = { hold = true, escalate = true }

local function esc_row(r, err)
  if not r then return nil, err end
  local raw = r.result
  r.result_bytes = raw and #raw or 0
  r.result = raw and json.decode(raw) or nil
  return r
end

local function esc_rows(rows, err)
  if not rows then return nil, err end
  for _, r in ipairs(rows) do esc_row(r) end
  return rows
end

-- e: { tenant_id, agent_id, sender_tier, tool, action, arguments (the
-- sealed arguments, a string), kind ("hold" | "escalate"), reason, policy,
-- execution_id }. Returns the new escalation's id or nil, err.
function M.open(db, e)
  assert(type(e) == "table", "escalations.open: a record is required")
  assert(M.KINDS[e.kind], "escalations.open: kind must be hold or escalate")
  assert(type(e.arguments) == "string", "escalations.open: arguments must be the sealed string")
  return db:insert("INSERT INTO escalations (tenant_id, agent_id, sender_tier, tool, action,"
    .. " arguments, kind, reason, policy, created_at, execution_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    e.tenant_id, e.agent_id, e.sender_tier, e.tool, e.action, blob(e.arguments), e.kind, e.reason, e.policy,
    db_mod.now(), e.execution_id)
end

local SELECT = "SELECT e.*, t.name AS tenant_name, a.name AS agent_name FROM escalations e"
  .. " JOIN tenants t ON t.id = e.tenant_id JOIN agents a ON a.id = e.agent_id"

-- One escalation with its tenant's and agent's names (tenant_name,
-- agent_name); with tenant_id, only within that tenant.
function M.get(db, id, tenant_id)
  if tenant_id then
    return esc_row(db:row(SELECT .. " WHERE e.id = ? AND e.tenant_id = ?", id, tenant_id))
  end
  return esc_row(db:row(SELECT .. " WHERE e.id = ?", id))
end

-- A page of a tenant's escalations, newest first, with ids below before:
-- at most limit rows; status nil for every status.
function M.page(db, tenant_id, status, before, limit)
  if status == nil then
    return esc_rows(db:query(SELECT .. " WHERE e.tenant_id = ? AND e.id < ? ORDER BY e.id DESC LIMIT ?",
      tenant_id, before, limit))
  end
  return esc_rows(db:query(SELECT .. " WHERE e.tenant_id = ? AND e.status = ? AND e.id < ?"
    .. " ORDER BY e.id DESC LIMIT ?", tenant_id, status, before, limit))
end

-- Decide an open escalation: the number of rows changed (1, or 0 when it
-- was decided already), or nil, err. node: the node that runs it (several
-- nodes on PostgreSQL).
function M.approve(db, id, actor, node)
  return db:run("UPDATE escalations SET status = 'approved', decided_by = ?, decided_at = ?, node = ?"
    .. " WHERE id = ? AND status = 'open'", actor, db_mod.now(), node, id)
end

function M.reject(db, id, actor, note)
  return db:run("UPDATE escalations SET status = 'rejected', decided_by = ?, decided_at = ?,"
    .. " decision_note = ? WHERE id = ? AND status = 'open'", actor, db_mod.now(), note, id)
end

-- Open an approved escalation without a result again (its run sent
-- nothing): the number of rows changed, or nil, err.
function M.reopen(db, id, note)
  return db:run("UPDATE escalations SET status = 'open', decided_by = NULL, decided_at = NULL,"
    .. " decision_note = ? WHERE id = ? AND status = 'approved' AND result IS NULL", note, id)
end

-- Store the result of an approved run (a table, stored as JSON).
function M.set_result(db, id, summary)
  assert(type(summary) == "table", "escalations.set_result: summary must be a table")
  return db:run("UPDATE escalations SET result = ? WHERE id = ?", json.encode(summary), id)
end

-- An approved escalation that is not settled: no result, or a result
-- whose outcome was unknown; nil when it is settled (or not approved).
function M.unsettled(db, id)
  return esc_row(db:row(UNSETTLED[db_mod.dialect(db)], id))
end

-- The ids of the approved escalations without a result, in order (with
-- live_since, several nodes: only those of the nodes whose lease ended
-- before that unix time, whose run died with them).
function M.approved_without_result(db, live_since)
  local rows, err
  if live_since then
    rows, err = db:query("SELECT id FROM escalations WHERE status = 'approved' AND result IS NULL"
      .. " AND (node IS NULL OR node NOT IN (SELECT id FROM nodes WHERE heartbeat_unix >= ?)) ORDER BY id",
      live_since)
  else
    rows, err = db:query("SELECT id FROM escalations WHERE status = 'approved' AND result IS NULL ORDER BY id")
  end
  if not rows then return nil, err end
  local out = {}
  for i, r in ipairs(rows) do out[i] = r.id end
  return out
end

-- The last send record an escalation's run wrote, or nil.
function M.last_send(db, id)
  return db:row("SELECT * FROM sends WHERE escalation_id = ? ORDER BY id DESC LIMIT 1", id)
end

-- How many escalations wait for a decision.
function M.count_open(db)
  local r, err = db:row("SELECT count(*) AS n FROM escalations WHERE status = 'open'")
  if not r then return nil, err end
  return r.n
end

return M
