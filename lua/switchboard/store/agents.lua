-- The agents' records. Every function takes the db handle first and
-- returns values, or nil, err when the store failed; a row that is not
-- there is nil. Rows come back as Lua values: groups a list, trusted_sender
-- a boolean (stored as 0/1), the tenant's features a list.
local json = require("switchboard.json")
local db_mod = require("switchboard.db")
local tenants = require("switchboard.store.tenants")

local M = {}

local function agent_row(r, err)
  if not r then return nil, err end
  r.groups = tenants.decode_list(r.groups)
  r.trusted_sender = r.trusted_sender == 1
  if r.tenant_features ~= nil then r.tenant_features = tenants.decode_list(r.tenant_features) end
  return r
end

local function agent_rows(rows, err)
  if not rows then return nil, err end
  for _, r in ipairs(rows) do agent_row(r) end
  return rows
end

function M.get(db, tenant_id, name)
  return agent_row(db:row("SELECT * FROM agents WHERE tenant_id = ? AND name = ?", tenant_id, name))
end

function M.by_id(db, id)
  return agent_row(db:row("SELECT * FROM agents WHERE id = ?", id))
end

-- An agent's name by id, or nil.
function M.name(db, id)
  local r, err = db:row("SELECT name FROM agents WHERE id = ?", id)
  if not r then return nil, err end
  return r.name
end

-- A tenant's agents by name, or (tenant_id nil) every agent by tenant and
-- name; each row has its tenant's name as tenant.
function M.list(db, tenant_id)
  if tenant_id then
    return agent_rows(db:query("SELECT a.*, t.name AS tenant FROM agents a JOIN tenants t ON t.id = a.tenant_id"
      .. " WHERE a.tenant_id = ? ORDER BY a.name", tenant_id))
  end
  return agent_rows(db:query("SELECT a.*, t.name AS tenant FROM agents a JOIN tenants t ON t.id = a.tenant_id"
    .. " ORDER BY t.name, a.name"))
end

-- The ids of the tenants that have an agent of this name (a list).
function M.tenants_with(db, name)
  local rows, err = db:query("SELECT tenant_id FROM agents WHERE name = ?", name)
  if not rows then return nil, err end
  local out = {}
  for i, r in ipairs(rows) do out[i] = r.tenant_id end
  return out
end

-- How many agents of a tenant are not revoked.
function M.count_live(db, tenant_id)
  local r, err = db:row("SELECT count(*) AS n FROM agents WHERE tenant_id = ? AND revoked_at IS NULL", tenant_id)
  if not r then return nil, err end
  return r.n
end

-- a: { tenant_id, name, type, groups (list), default_tier, trusted_sender
-- (boolean), token_hash, token_hint }. Returns the new agent's id or nil, err.
function M.add(db, a)
  assert(type(a) == "table" and type(a.groups) == "table", "agents.add: a record with a groups list is required")
  return db:insert("INSERT INTO agents (tenant_id, name, type, groups, default_tier, trusted_sender,"
    .. " token_hash, token_hint, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    a.tenant_id, a.name, a.type, json.encode(json.array(a.groups)), a.default_tier,
    a.trusted_sender and 1 or 0, a.token_hash, a.token_hint, db_mod.now())
end

-- The live agent whose token hashes to token_hash, with its tenant's name,
-- features and wrapped data key (tenant_name, tenant_features,
-- tenant_data_key), or nil.
function M.by_token_hash(db, token_hash)
  return agent_row(db:row("SELECT a.*, t.name AS tenant_name, t.features AS tenant_features,"
    .. " t.data_key AS tenant_data_key FROM agents a JOIN tenants t ON t.id = a.tenant_id"
    .. " WHERE a.token_hash = ? AND a.revoked_at IS NULL", token_hash))
end

function M.revoke(db, id)
  local n, err = db:run("UPDATE agents SET revoked_at = ? WHERE id = ?", db_mod.now(), id)
  if not n then return nil, err end
  return true
end

function M.set_groups(db, id, groups)
  assert(type(groups) == "table", "agents.set_groups: groups must be a list")
  local n, err = db:run("UPDATE agents SET groups = ? WHERE id = ?", json.encode(json.array(groups)), id)
  if not n then return nil, err end
  return true
end

return M
