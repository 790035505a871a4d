-- Tenants and agents: who may connect, and with which tools. Every query
-- is scoped by tenant; agent tokens are stored only as SHA-256 hashes.
local json = require("switchboard.json")
local db_mod = require("switchboard.db")
local vault = require("core.vault")

local M = {}

M.AGENT_TYPES = { caioo = true, personal_assistant = true }
M.TIERS = { owner = true, admin = true, vip = true, internal = true, external = true }

local function decode_list(s)
  local v = json.decode(s or "[]")
  return type(v) == "table" and v or {}
end
M.decode_list = decode_list

local function tenant_row(r)
  if not r then return nil end
  r.features = decode_list(r.features)
  return r
end

function M.tenant(db, name)
  return tenant_row(db:row("SELECT * FROM tenants WHERE name = ?", name))
end

function M.tenant_by_id(db, id)
  return tenant_row(db:row("SELECT * FROM tenants WHERE id = ?", id))
end

function M.tenants(db)
  local rows = assert(db:query("SELECT id, name, features, created_at FROM tenants ORDER BY name"))
  for _, r in ipairs(rows) do tenant_row(r) end
  return rows
end

-- Tenant names: what operators type, so short and plain.
function M.valid_name(s)
  return type(s) == "string" and s:match("^[%w][%w_%.%-]*$") ~= nil and #s <= 64
end

function M.add_tenant(db, master, name)
  if not M.valid_name(name) then
    return nil, "tenant name: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
  end
  if M.tenant(db, name) then return nil, ("tenant '%s' already exists"):format(name) end
  local blob = require("core.store").blob
  local ok, err = db:begin()
  if not ok then return nil, "could not add the tenant: " .. tostring(err) end
  local id
  id, err = db:insert("INSERT INTO tenants (name, data_key, created_at) VALUES (?, ?, ?)",
    name, blob(""), db_mod.now())
  if id then
    local wrapped, version = master:new_data_key(M.key_context(id))
    if not wrapped then
      ok, err = nil, version
    else
      ok, err = db:run("UPDATE tenants SET data_key = ?, data_key_version = ? WHERE id = ?", blob(wrapped), version, id)
    end
    if ok then ok, err = db:commit() end
  end
  if not (id and ok) then
    if db:in_transaction() then db:rollback() end
    return nil, "could not add the tenant: " .. tostring(err)
  end
  return M.tenant_by_id(db, id)
end

-- What binds a tenant's sealed data to that tenant.
function M.key_context(tenant_id)
  return "tenant:" .. tostring(tenant_id)
end

-- {======================================================
-- Master key rotation: the tenants' data keys are rewrapped under the
-- master's primary version; an older version is retired once nothing is
-- wrapped under it. The data keys themselves (and so every sealed field)
-- stay as they are.
-- =======================================================

-- Rewrap, in one transaction, every data key not under the primary version.
-- Returns { version, rewrapped = { [tenant id] = wrapped key }, count,
-- failed = { { tenant, version, why } } } or nil, err (nothing changed).
-- A key that cannot be opened (damaged, or under a version the master no
-- longer holds) is left as it is and reported in failed.
function M.rewrap_all(db, master)
  local blob = require("core.store").blob
  local _, primary = master:versions()
  local ok, err = db:begin()
  if not ok then return nil, "could not begin the rewrap: " .. tostring(err) end
  local res = { version = primary, rewrapped = {}, count = 0, failed = {} }
  local rows
  rows, err = db:query("SELECT id, name, data_key, data_key_version FROM tenants ORDER BY id")
  for _, r in ipairs(rows or {}) do
    if r.data_key_version ~= primary or master:key_version(r.data_key) ~= primary then
      local wrapped, version = master:rewrap(r.data_key, M.key_context(r.id))
      if wrapped then
        ok, err = db:run("UPDATE tenants SET data_key = ?, data_key_version = ? WHERE id = ?",
          blob(wrapped), version, r.id)
        if not ok then break end
        res.rewrapped[r.id], res.count = wrapped, res.count + 1
      else
        res.failed[#res.failed + 1] = { tenant = r.name, version = r.data_key_version, why = version }
      end
    end
  end
  if rows and ok then ok, err = db:commit() end
  if not (rows and ok) then
    if db:in_transaction() then db:rollback() end
    return nil, "could not rewrap the data keys: " .. tostring(err)
  end
  return res
end

-- The tenants whose data key is wrapped under version (by the row's
-- version or by the wrapped key's own prefix): a list of names.
function M.tenants_on_version(db, master, version)
  local names = {}
  for _, r in ipairs(assert(db:query("SELECT name, data_key, data_key_version FROM tenants ORDER BY name"))) do
    if r.data_key_version == version or master:key_version(r.data_key) == version then
      names[#names + 1] = r.name
    end
  end
  return names
end

-- }======================================================

-- Seal and open a field of a tenant's data with that tenant's key (tenant:
-- a row or a session tenant with id and data_key). The blob opens only for
-- the same tenant and field.
function M.seal(master, tenant, field, plaintext)
  return master:seal(tenant.data_key, M.key_context(tenant.id), field, plaintext)
end

function M.open(master, tenant, field, blob)
  return master:open(tenant.data_key, M.key_context(tenant.id), field, blob)
end

-- A credential handle (the secret stays in C) for a sealed secret.
function M.credential(master, tenant, field, blob, username)
  return master:credential(tenant.data_key, M.key_context(tenant.id), field, blob, username)
end

function M.set_features(db, tenant, features)
  local ok, err = db:run("UPDATE tenants SET features = ? WHERE id = ?", json.encode(json.array(features)), tenant.id)
  db_mod.tenant_changed(db, tenant.id)
  return ok, err
end

local function agent_row(r)
  if not r then return nil end
  r.groups = decode_list(r.groups)
  r.trusted_sender = r.trusted_sender == 1
  return r
end

function M.agent(db, tenant_id, name)
  return agent_row(db:row("SELECT * FROM agents WHERE tenant_id = ? AND name = ?", tenant_id, name))
end

function M.agents(db, tenant_id)
  local rows
  if tenant_id then
    rows = assert(db:query("SELECT a.*, t.name AS tenant FROM agents a JOIN tenants t ON t.id = a.tenant_id"
      .. " WHERE a.tenant_id = ? ORDER BY a.name", tenant_id))
  else
    rows = assert(db:query("SELECT a.*, t.name AS tenant FROM agents a JOIN tenants t ON t.id = a.tenant_id"
      .. " ORDER BY t.name, a.name"))
  end
  for _, r in ipairs(rows) do agent_row(r) end
  return rows
end

-- Create an agent; returns the row and its token (shown once, stored hashed).
function M.add_agent(db, tenant, opts)
  if not M.valid_name(opts.name) then
    return nil, "agent name: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
  end
  if not M.AGENT_TYPES[opts.type] then
    return nil, "agent type: must be caioo or personal_assistant"
  end
  local tier = opts.default_tier or "external"
  if not M.TIERS[tier] then
    return nil, "default tier: must be one of owner, admin, vip, internal, external"
  end
  if M.agent(db, tenant.id, opts.name) then
    return nil, ("agent '%s' already exists in tenant '%s'"):format(opts.name, tenant.name)
  end
  local token = vault.token("sbt_")
  local id, err = db:insert("INSERT INTO agents (tenant_id, name, type, groups, default_tier, trusted_sender,"
    .. " token_hash, token_hint, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    tenant.id, opts.name, opts.type, json.encode(json.array(opts.groups or {})), tier,
    opts.trusted_sender and 1 or 0, M.hash_token(token), token:sub(1, 8) .. "…", db_mod.now())
  if not id then return nil, "could not add the agent: " .. tostring(err) end
  return agent_row(db:row("SELECT * FROM agents WHERE id = ?", id)), token
end

function M.hash_token(token)
  return vault.sha256_hex("switchboard agent token\0" .. token)
end

-- The live agent (and its tenant) a token belongs to, or nil.
function M.authenticate(db, token)
  if type(token) ~= "string" or #token < 20 or #token > 200 then return nil end
  local r = db:row("SELECT a.*, t.name AS tenant_name, t.features AS tenant_features, t.data_key AS tenant_data_key"
    .. " FROM agents a JOIN tenants t ON t.id = a.tenant_id"
    .. " WHERE a.token_hash = ? AND a.revoked_at IS NULL", M.hash_token(token))
  return agent_row(r)
end

function M.revoke_agent(db, tenant, name)
  local a = M.agent(db, tenant.id, name)
  if not a then return nil, ("no agent '%s' in tenant '%s'"):format(name, tenant.name) end
  if a.revoked_at then return nil, ("agent '%s' is already revoked"):format(name) end
  local ok, err = db:run("UPDATE agents SET revoked_at = ? WHERE id = ?", db_mod.now(), a.id)
  if not ok then return nil, ("could not revoke agent '%s': %s"):format(name, tostring(err)) end
  return M.agent(db, tenant.id, name)
end

function M.set_groups(db, agent, groups)
  return db:run("UPDATE agents SET groups = ? WHERE id = ?", json.encode(json.array(groups)), agent.id)
end

-- A tenant's feature code as a key of its tenant_groups set.
function M.feature_key(code)
  return "feature:" .. code
end

-- What a tenant is entitled to: the tool groups it has enabled (those that
-- need a connection) and its feature codes (as feature_key(code)); a group
-- counts only with the feature its provider needs (registry:visible).
function M.tenant_groups(db, tenant_id)
  local set = {}
  for _, r in ipairs(assert(db:query("SELECT name FROM tenant_groups WHERE tenant_id = ?", tenant_id))) do
    set[r.name] = true
  end
  local t = db:row("SELECT features FROM tenants WHERE id = ?", tenant_id)
  for _, f in ipairs(decode_list(t and t.features)) do
    if type(f) == "string" then set[M.feature_key(f)] = true end
  end
  return set
end

-- Settings changes go to the audit trail with who, when, old and new.
function M.settings_audit(db, tenant_id, actor, action, old, new)
  return require("switchboard.audit").for_db(db):setting(tenant_id, actor, action, old, new)
end

return M
