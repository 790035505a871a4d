-- The audit trail's records (audit_log): what the chain writes and reads
-- back as stored (the chain hashes the stored values, so the rows of the
-- chain are returned as they are), and the operator's reads (executions,
-- one execution's calls, settings changes), whose JSON columns come back
-- decoded. Every function takes the db handle first and returns values,
-- or nil, err when the store failed; a row that is not there is nil.
local json = require("switchboard.json")
local db_mod = require("switchboard.db")

local M = {}

-- {======================================================
-- The chain
-- =======================================================

local COLUMNS = { "id", "at", "kind", "tenant_id", "agent_id", "actor", "execution_id", "sender_tier",
                  "tool", "action", "params", "decision", "policies", "outcome", "detail", "retries",
                  "duration_ms", "chain", "anchored", "prev_hash", "hash" }

local INSERT = "INSERT INTO audit_log (" .. table.concat(COLUMNS, ", ") .. ")"
  .. " VALUES (" .. string.rep("?, ", #COLUMNS - 1) .. "?)"

-- Write one record r (every column above, id included) as it is. Returns
-- true or nil, err. The caller holds the transaction.
function M.append(db, r)
  assert(type(r) == "table" and math.type(r.id) == "integer", "audit.append: a record with its id is required")
  local args = {}
  for i, c in ipairs(COLUMNS) do args[i] = r[c] end
  local n, err = db:run(INSERT, table.unpack(args, 1, #COLUMNS))
  if not n then return nil, err end
  return true
end

-- The advisory lock key that serializes the appends of every node (PostgreSQL).
M.CHAIN_LOCK = 0x5342000000000002

-- In the caller's transaction: on PostgreSQL, wait for the chain's lock
-- (held to the COMMIT: one appender at a time, whatever the node), then
-- the chain's last record as last() gives it; on SQLite (one writer, the
-- transaction is exclusive) only the last record. Returns the row, or
-- false for an empty trail, or nil, err.
function M.lock_chain(db)
  if db_mod.is_pg(db) then
    local n, err = db:run("SELECT pg_advisory_xact_lock(?)", M.CHAIN_LOCK)
    if not n then return nil, err end
  end
  local r, err = M.last(db)
  if r == nil and err then return nil, err end
  return r or false
end

-- The last record's id, hash, chain and anchored, or nil (an empty trail).
function M.last(db)
  return db:row("SELECT id, hash, chain, anchored FROM audit_log ORDER BY id DESC LIMIT 1")
end

-- The hash of record id, or nil.
function M.hash_at(db, id)
  local r, err = db:row("SELECT hash FROM audit_log WHERE id = ?", id)
  if not r then return nil, err end
  return r.hash
end

-- Whether any record has a chain version other than chain.
function M.other_chain(db, chain)
  local r, err = db:row("SELECT id FROM audit_log WHERE chain <> ? LIMIT 1", chain)
  if err then return nil, err end
  return r ~= nil
end

-- The last id of the records of chain version chain, or nil.
function M.last_of_chain(db, chain)
  local r, err = db:row("SELECT max(id) AS id FROM audit_log WHERE chain = ?", chain)
  if not r then return nil, err end
  return r.id
end

-- How many records have chain version chain.
function M.count_of_chain(db, chain)
  local r, err = db:row("SELECT count(*) AS n FROM audit_log WHERE chain = ?", chain)
  if not r then return nil, err end
  return r.n
end

-- The lowest and the highest id (nil, nil for an empty trail).
function M.first_id(db)
  local r, err = db:row("SELECT min(id) AS id FROM audit_log")
  if not r then return nil, err end
  return r.id
end

function M.top_id(db)
  local r, err = db:row("SELECT max(id) AS id FROM audit_log")
  if not r then return nil, err end
  return r.id
end

-- Record id, every column as stored, or nil.
function M.record(db, id)
  return db:row("SELECT * FROM audit_log WHERE id = ?", id)
end

-- The records after id after up to id top, in order, at most limit.
function M.records(db, after, top, limit)
  return db:query("SELECT * FROM audit_log WHERE id > ? AND id <= ? ORDER BY id LIMIT ?", after, top, limit)
end

-- }======================================================

-- {======================================================
-- The operator's reads. SQL holds the statements of the executions pages
-- (each on an index: tests/unit/executions_pages_spec.lua holds their plans).
-- =======================================================

M.SQL = {
  walk = "SELECT id, agent_id, execution_id FROM audit_log WHERE tenant_id = ? AND kind = 'call'"
    .. " AND id < ? AND id >= ? ORDER BY id DESC LIMIT ?",
  later = "SELECT id FROM audit_log WHERE tenant_id = ? AND kind = 'call' AND execution_id IS ?"
    .. " AND agent_id IS ? AND id > ? AND id <= ? LIMIT 1",
  calls = "SELECT id, at, tool, action, duration_ms, outcome, decision FROM audit_log WHERE tenant_id = ?"
    .. " AND kind = 'call' AND execution_id IS ? AND agent_id IS ? AND id >= ? AND id <= ? ORDER BY id DESC LIMIT ?",
  first = "SELECT at FROM audit_log WHERE tenant_id = ? AND kind = 'call' AND execution_id IS ?"
    .. " AND agent_id IS ? AND id >= ? ORDER BY id LIMIT 1",
}
-- PostgreSQL's: `x IS ?` (NULL-safe equality) is IS NOT DISTINCT FROM there.
M.SQL_PG = {}
for k, v in pairs(M.SQL) do M.SQL_PG[k] = v:gsub(" IS %?", " IS NOT DISTINCT FROM ?") end
local function sql_of(db, name)
  if db_mod.is_pg(db) then return M.SQL_PG[name] end
  return M.SQL[name]
end

local AGENT_OF = "SELECT agent_id FROM audit_log WHERE tenant_id = ? AND kind = 'call' AND execution_id = ?"

-- A tenant's calls below id before and at or above floor, newest first, at
-- most limit: { id, agent_id, execution_id }.
function M.walk(db, tenant_id, before, floor, limit)
  return db:query(sql_of(db, "walk"), tenant_id, before, floor, limit)
end

-- Whether the execution (agent_id, execution_id; either may be nil) has a
-- call above id after up to id top.
function M.called_later(db, tenant_id, execution_id, agent_id, after, top)
  local r, err = db:row(sql_of(db, "later"), tenant_id, execution_id, agent_id, after, top)
  if err then return nil, err end
  return r ~= nil
end

-- An execution's calls from floor up to id top, newest first, at most
-- limit: { id, at, tool, action, duration_ms, outcome, decision }.
function M.execution_tail(db, tenant_id, execution_id, agent_id, floor, top, limit)
  return db:query(sql_of(db, "calls"), tenant_id, execution_id, agent_id, floor, top, limit)
end

-- When an execution's first call at or above floor was made, or nil.
function M.execution_start(db, tenant_id, execution_id, agent_id, floor)
  local r, err = db:row(sql_of(db, "first"), tenant_id, execution_id, agent_id, floor)
  if not r then return nil, err end
  return r.at
end

-- Whether there are calls under execution_id, and the lowest and the
-- highest agent id among them: found, lo, hi (false when there is none).
function M.execution_agents(db, tenant_id, execution_id)
  local lo, err = db:row(AGENT_OF .. " ORDER BY agent_id LIMIT 1", tenant_id, execution_id)
  if not lo then
    if err then return nil, err end
    return false
  end
  local hi, herr = db:row(AGENT_OF .. " ORDER BY agent_id DESC LIMIT 1", tenant_id, execution_id)
  if not hi then
    if herr then return nil, herr end
    return false
  end
  return true, lo.agent_id, hi.agent_id
end

-- The agents (agent_id, name) with calls under execution_id, at most limit.
function M.execution_agent_names(db, tenant_id, execution_id, limit)
  return db:query("SELECT DISTINCT l.agent_id, a.name FROM audit_log l LEFT JOIN agents a"
    .. " ON a.id = l.agent_id WHERE l.tenant_id = ? AND l.kind = 'call' AND l.execution_id = ? LIMIT ?",
    tenant_id, execution_id, limit)
end

-- One execution's calls after id after, oldest first, at most limit:
-- every column (params, policies and detail decoded; their stored size
-- as bytes) and the agent's name as agent_name.
function M.execution_calls(db, tenant_id, execution_id, agent_id, after, limit)
  local rows, err = db:query("SELECT l.*, a.name AS agent_name FROM audit_log l LEFT JOIN agents a"
    .. " ON a.id = l.agent_id WHERE l.tenant_id = ? AND l.kind = 'call' AND l.execution_id = ? AND l.agent_id"
    .. (db_mod.is_pg(db) and " IS NOT DISTINCT FROM ?" or " IS ?")
    .. " AND l.id > ? ORDER BY l.id LIMIT ?", tenant_id, execution_id, agent_id, after, limit)
  if not rows then return nil, err end
  for _, r in ipairs(rows) do
    r.bytes = #(r.params or "") + #(r.detail or "") + #(r.policies or "")
    r.params = json.decode(r.params or "{}")
    r.policies = json.decode(r.policies or "[]")
    r.detail = r.detail and json.decode(r.detail) or nil
  end
  return rows
end

-- The id of a tenant's last call, or nil.
function M.last_call(db, tenant_id)
  local r, err = db:row("SELECT id FROM audit_log WHERE tenant_id = ? AND kind = 'call'"
    .. " ORDER BY id DESC LIMIT 1", tenant_id)
  if not r then return nil, err end
  return r.id
end

-- The id of a tenant's first record at or after the time stamp at, or nil.
function M.first_since(db, tenant_id, at)
  local r, err = db:row("SELECT id FROM audit_log WHERE tenant_id = ? AND at >= ? ORDER BY at, id LIMIT 1",
    tenant_id, at)
  if not r then return nil, err end
  return r.id
end

-- A page of a tenant's settings changes below id before, newest first, at
-- most limit: { id, at, actor, action, old, new, bytes (the stored size
-- of params and actor) }.
function M.settings(db, tenant_id, before, limit)
  local rows, err = db:query("SELECT id, at, actor, action, params FROM audit_log"
    .. " WHERE tenant_id = ? AND kind = 'setting' AND id < ? ORDER BY id DESC LIMIT ?", tenant_id, before, limit)
  if not rows then return nil, err end
  local out = {}
  for i, r in ipairs(rows) do
    local v = json.decode(r.params or "{}") or {}
    out[i] = { id = r.id, at = r.at, actor = r.actor, action = r.action, old = v.old, new = v.new,
               bytes = #(r.params or "") + #(r.actor or "") }
  end
  return out
end

-- }======================================================

return M
