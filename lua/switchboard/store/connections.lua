-- Connections: one per (tenant, integration). The columns every
-- integration has (key id, sealed secret, status, account name, the
-- autonomous-sends switch, when it was tested) and the integration's own
-- settings, a JSON object the repository encodes and decodes.
local json = require("switchboard.json")
local store = require("core.store")
local db_mod = require("switchboard.db")

local M = {}

local SQL = {
  get = "SELECT * FROM connections WHERE tenant_id = ? AND integration = ?",
  list = "SELECT * FROM connections WHERE tenant_id = ? ORDER BY integration",
  insert = "INSERT INTO connections (tenant_id, integration, key_id, secret, status, status_reason, account_name,"
    .. " autonomous_sends, settings, last_tested_at, created_at, updated_at)"
    .. " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
  delete = "DELETE FROM connections WHERE tenant_id = ? AND integration = ?",
  group_add = "INSERT INTO tenant_groups (tenant_id, name, created_at) VALUES (?, ?, ?)"
    .. " ON CONFLICT (tenant_id, name) DO NOTHING",
  group_remove = "DELETE FROM tenant_groups WHERE tenant_id = ? AND name = ?",
}
M.SQL = SQL

-- The columns an update may set besides settings.
local COLUMNS = { key_id = true, secret = true, status = true, status_reason = true, account_name = true,
                  autonomous_sends = true, last_tested_at = true }

local function decode(r)
  if not r then return nil end
  local s = json.decode(r.settings or "{}")
  r.settings = type(s) == "table" and s or {}
  r.autonomous_sends = r.autonomous_sends == 1
  return r
end

-- The connection, or nil (none), or nil, err (it could not be read).
function M.get(db, tenant_id, integration)
  local r, err = db:row(SQL.get, tenant_id, integration)
  if r == nil and err then return nil, err end
  return decode(r)
end

-- A tenant's connections, sorted by integration; or nil, err.
function M.list(db, tenant_id)
  local rows, err = db:query(SQL.list, tenant_id)
  if not rows then return nil, err end
  for i, r in ipairs(rows) do rows[i] = decode(r) end
  return rows
end

local function blob(v)
  if v == nil then return nil end
  return store.blob(v)
end

-- Store a new connection, and (in the same transaction) give the tenant the
-- integration's tool group. c: { tenant_id, integration, key_id, secret
-- (sealed), status, account_name, settings, group }. true or nil, err.
function M.insert(db, c)
  local now = db_mod.now()
  return db_mod.transaction(db, function()
    local ok, err = db:run(SQL.insert, c.tenant_id, c.integration, c.key_id, blob(c.secret), c.status or "active",
      c.status_reason, c.account_name, c.autonomous_sends and 1 or 0, json.encode(c.settings or {}),
      now, now, now)
    if not ok then return nil, err end
    if c.group then
      ok, err = db:run(SQL.group_add, c.tenant_id, c.group, now)
      if not ok then return nil, err end
    end
    return true
  end)
end

-- Change a connection. changes: columns (key_id, secret, status, …) and
-- settings (a table of the integration's settings to set; a key set to
-- json.null is removed). true or nil, err.
function M.update(db, tenant_id, integration, changes)
  local cols = {}
  for k in pairs(changes) do
    if k ~= "settings" then
      if not COLUMNS[k] then error(("connections.update: unknown column '%s'"):format(tostring(k)), 2) end
      cols[#cols + 1] = k
    end
  end
  table.sort(cols) -- one statement text per set of columns
  local function run()
    local text, args, n = {}, {}, 0
    local function add(col, v)
      if v == json.null then v = nil end
      n = n + 1
      text[n], args[n] = col .. " = ?", v
    end
    for _, k in ipairs(cols) do
      local v = changes[k]
      if k == "secret" and v ~= json.null then v = blob(v) elseif k == "autonomous_sends" then v = v and 1 or 0 end
      add(k, v)
    end
    if changes.settings then
      local cur, err = db:row("SELECT settings FROM connections WHERE tenant_id = ? AND integration = ?",
        tenant_id, integration)
      if not cur then return nil, err or "no such connection" end
      local s = json.decode(cur.settings or "{}")
      if type(s) ~= "table" then s = {} end
      for k, v in pairs(changes.settings) do
        if v == json.null then s[k] = nil else s[k] = v end
      end
      add("settings", json.encode(s))
    end
    add("updated_at", db_mod.now())
    args[n + 1], args[n + 2] = tenant_id, integration
    local count, err = db:run("UPDATE connections SET " .. table.concat(text, ", ")
      .. " WHERE tenant_id = ? AND integration = ?", table.unpack(args, 1, n + 2))
    if not count then return nil, err end
    if count == 0 then return nil, "no such connection" end
    return true
  end
  if changes.settings and not db:in_transaction() then
    return db_mod.transaction(db, run)
  end
  return run()
end

-- Remove a connection and the tool group it gave. true or nil, err.
function M.delete(db, tenant_id, integration, group)
  return db_mod.transaction(db, function()
    local ok, err = db:run(SQL.delete, tenant_id, integration)
    if not ok then return nil, err end
    if group then
      ok, err = db:run(SQL.group_remove, tenant_id, group)
      if not ok then return nil, err end
    end
    return true
  end)
end

return M
