-- The tenants' records: the tenants table and a tenant's enabled tool
-- groups (tenant_groups). Every function takes the db handle first and
-- returns values, or nil, err when the store failed; a row that is not
-- there is nil. Rows come back with their JSON columns decoded (features:
-- a list); the SQL and its SQLite dialect stay in this module.
local json = require("switchboard.json")
local db_mod = require("switchboard.db")
local blob = require("core.store").blob

local M = {}

-- A JSON list column as a Lua list ({} when empty, NULL or not a list).
function M.decode_list(s)
  if type(s) == "table" then return s end
  local v = json.decode(s or "[]")
  return type(v) == "table" and v or {}
end

local function tenant_row(r, err)
  if not r then return nil, err end
  if r.features ~= nil then r.features = M.decode_list(r.features) end
  return r
end

local function rows_of(rows, err, fn)
  if not rows then return nil, err end
  if fn then for _, r in ipairs(rows) do fn(r) end end
  return rows
end

function M.by_name(db, name)
  return tenant_row(db:row("SELECT * FROM tenants WHERE name = ?", name))
end

function M.by_id(db, id)
  return tenant_row(db:row("SELECT * FROM tenants WHERE id = ?", id))
end

-- Every tenant, by name: { id, name, features, created_at }.
function M.list(db)
  return rows_of(db:query("SELECT id, name, features, created_at FROM tenants ORDER BY name"), nil, tenant_row)
end

-- Add a tenant and its data key in one transaction: wrap(id) returns the
-- wrapped data key and its master key version, or nil, err. Returns the
-- new tenant's id, or nil, err (then nothing was written).
function M.add(db, name, wrap)
  assert(type(name) == "string", "tenants.add: name must be a string")
  assert(type(wrap) == "function", "tenants.add: wrap must be a function")
  local id
  local ok, err = db_mod.transaction(db, function()
    local rowid, ierr = db:insert("INSERT INTO tenants (name, data_key, created_at) VALUES (?, ?, ?)",
      name, blob(""), db_mod.now())
    if not rowid then return nil, ierr end
    local wrapped, version = wrap(rowid)
    if not wrapped then return nil, version end
    local n, uerr = db:run("UPDATE tenants SET data_key = ?, data_key_version = ? WHERE id = ?",
      blob(wrapped), version, rowid)
    if not n then return nil, uerr end
    id = rowid
    return true
  end)
  if not ok then return nil, err end
  return id
end

-- Set a tenant's feature codes (a list of strings).
function M.set_features(db, tenant_id, features)
  assert(type(features) == "table", "tenants.set_features: features must be a list")
  local n, err = db:run("UPDATE tenants SET features = ? WHERE id = ?", json.encode(json.array(features)), tenant_id)
  if not n then return nil, err end
  return true
end

-- The data keys: { id, name, data_key, data_key_version } by name.
function M.keys(db)
  return db:query("SELECT id, name, data_key, data_key_version FROM tenants ORDER BY name")
end

-- The tenants whose data_key_version is not version: { name, data_key_version }.
function M.not_on_version(db, version)
  return db:query("SELECT name, data_key_version FROM tenants WHERE data_key_version <> ? ORDER BY name", version)
end

-- Rewrap data keys in one transaction, in id order: rewrap(row) (row: id,
-- name, data_key, data_key_version) returns the new wrapped key and its
-- version, or nil to leave the row as it is. Returns true, or nil, err
-- (then nothing changed).
function M.rewrap(db, rewrap)
  assert(type(rewrap) == "function", "tenants.rewrap: rewrap must be a function")
  return db_mod.transaction(db, function()
    local rows, err = db:query("SELECT id, name, data_key, data_key_version FROM tenants ORDER BY id")
    if not rows then return nil, err end
    for _, r in ipairs(rows) do
      local wrapped, version = rewrap(r)
      if wrapped then
        local n, uerr = db:run("UPDATE tenants SET data_key = ?, data_key_version = ? WHERE id = ?",
          blob(wrapped), version, r.id)
        if not n then return nil, uerr end
      end
    end
    return true
  end)
end

-- The names of a tenant's enabled tool groups (a list).
function M.groups(db, tenant_id)
  local rows, err = db:query("SELECT name FROM tenant_groups WHERE tenant_id = ?", tenant_id)
  if not rows then return nil, err end
  local out = {}
  for i, r in ipairs(rows) do out[i] = r.name end
  return out
end

-- Enable a tool group for a tenant (kept when it is enabled already);
-- disable it. Both return true or nil, err, and run inside the caller's
-- transaction when one is open (a connection and its group change together).
function M.enable_group(db, tenant_id, name)
  assert(type(name) == "string" and name ~= "", "tenants.enable_group: name must be a group's name")
  local n, err = db:run("INSERT INTO tenant_groups (tenant_id, name, created_at) VALUES (?, ?, ?)"
    .. " ON CONFLICT (tenant_id, name) DO NOTHING",
    tenant_id, name, db_mod.now())
  if not n then return nil, err end
  return true
end

function M.disable_group(db, tenant_id, name)
  assert(type(name) == "string" and name ~= "", "tenants.disable_group: name must be a group's name")
  local n, err = db:run("DELETE FROM tenant_groups WHERE tenant_id = ? AND name = ?", tenant_id, name)
  if not n then return nil, err end
  return true
end

-- A tenant's feature codes (a list), or nil when there is no such tenant.
function M.features(db, tenant_id)
  local r, err = db:row("SELECT features FROM tenants WHERE id = ?", tenant_id)
  if not r then return nil, err end
  return M.decode_list(r.features)
end

return M
