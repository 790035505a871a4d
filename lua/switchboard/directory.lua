-- Tenants and agents: who may connect, and with which tools. Every query
-- is scoped by tenant; agent tokens are stored only as SHA-256 hashes.
-- The records are read and written through the store's repositories
-- (switchboard.store.tenants, switchboard.store.agents).
local db_mod = require("switchboard.db")
local vault = require("core.vault")
local tenants = require("switchboard.store.tenants")
local agents = require("switchboard.store.agents")

local M = {}

M.AGENT_TYPES = { caioo = true, personal_assistant = true }
M.TIERS = { owner = true, admin = true, vip = true, internal = true, external = true }

-- A list as the store returns it (or a JSON list): a Lua list.
M.decode_list = tenants.decode_list

function M.tenant(db, name)
  return tenants.by_name(db, name)
end

function M.tenant_by_id(db, id)
  return tenants.by_id(db, id)
end

function M.tenants(db)
  return assert(tenants.list(db))
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
  local id, err = tenants.add(db, name, function(tid)
    return master:new_data_key(M.key_context(tid))
  end)
  if not id then return nil, "could not add the tenant: " .. tostring(err) end
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
  local _, primary = master:versions()
  local res = { version = primary, rewrapped = {}, count = 0, failed = {} }
  local ok, err = tenants.rewrap(db, function(r)
    if r.data_key_version == primary and master:key_version(r.data_key) == primary then return nil end
    local wrapped, version = master:rewrap(r.data_key, M.key_context(r.id))
    if wrapped then
      res.rewrapped[r.id], res.count = wrapped, res.count + 1
      return wrapped, version
    end
    res.failed[#res.failed + 1] = { tenant = r.name, version = r.data_key_version, why = version }
    return nil
  end)
  if not ok then return nil, "could not rewrap the data keys: " .. tostring(err) end
  return res
end

-- The tenants whose data key is wrapped under version (by the row's
-- version or by the wrapped key's own prefix): a list of names.
function M.tenants_on_version(db, master, version)
  local names = {}
  for _, r in ipairs(assert(tenants.keys(db))) do
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
  local ok, err = tenants.set_features(db, tenant.id, features)
  db_mod.tenant_changed(db, tenant.id)
  return ok, err
end

function M.agent(db, tenant_id, name)
  return agents.get(db, tenant_id, name)
end

function M.agents(db, tenant_id)
  return assert(agents.list(db, tenant_id))
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
  local id, err = agents.add(db, { tenant_id = tenant.id, name = opts.name, type = opts.type,
    groups = opts.groups or {}, default_tier = tier, trusted_sender = opts.trusted_sender and true or false,
    token_hash = M.hash_token(token), token_hint = token:sub(1, 8) .. "…" })
  if not id then return nil, "could not add the agent: " .. tostring(err) end
  return agents.by_id(db, id), token
end

function M.hash_token(token)
  return vault.sha256_hex("switchboard agent token\0" .. token)
end

-- The live agent (and its tenant) a token belongs to, or nil.
function M.authenticate(db, token)
  if type(token) ~= "string" or #token < 20 or #token > 200 then return nil end
  return (agents.by_token_hash(db, M.hash_token(token)))
end

function M.revoke_agent(db, tenant, name)
  local a = M.agent(db, tenant.id, name)
  if not a then return nil, ("no agent '%s' in tenant '%s'"):format(name, tenant.name) end
  if a.revoked_at then return nil, ("agent '%s' is already revoked"):format(name) end
  local ok, err = agents.revoke(db, a.id)
  if not ok then return nil, ("could not revoke agent '%s': %s"):format(name, tostring(err)) end
  return M.agent(db, tenant.id, name)
end

function M.set_groups(db, agent, groups)
  return agents.set_groups(db, agent.id, groups)
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
  for _, name in ipairs(assert(tenants.groups(db, tenant_id))) do
    set[name] = true
  end
  for _, f in ipairs(tenants.features(db, tenant_id) or {}) do
    if type(f) == "string" then set[M.feature_key(f)] = true end
  end
  return set
end

-- Settings changes go to the audit trail with who, when, old and new.
function M.settings_audit(db, tenant_id, actor, action, old, new)
  return require("switchboard.audit").for_db(db):setting(tenant_id, actor, action, old, new)
end

return M
