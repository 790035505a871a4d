-- What every integration's connection shares, so that a package writes
-- only what is its own: the call path's cache of each (tenant,
-- integration) connection, the policy view, a client with the credential
-- opened in C, and the admin methods that are the same everywhere
-- (<name>.autonomous_sends and <name>.disconnect).
--
-- A package's connection model (integrations/<name>/connection.lua) gives:
--   FIELD              the sealing field of its secret ("<name>.api_key")
--   decode(row)        the stored row → the connection the package uses
--                      (optional; the repository's row otherwise)
--   client(rt, conn, cred)  a client for the connection with an opened
--                      credential handle
--   policy_view(conn)  what policies read (optional)
--   view(tenant, conn) the public view admin methods answer (never the secret)
--   install(admin)     its own admin methods (connect, show, test, update, …)
--   credential         { kind = "basic"|"bearer"|"header", header = name }
--                      (optional; "basic" with the key id as the user)
local repo = require("switchboard.store.connections")
local credentials = require("switchboard.credentials")
local integrations = require("switchboard.integrations")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")

local M = {}

-- The stored connection, decoded by the package's model; nil or nil, err.
function M.get(db, integration, tenant_id)
  local r, err = repo.get(db, tenant_id, integration)
  if not r then return nil, err end
  local model = integrations.connection(integration)
  if model and model.decode then return model.decode(r) end
  return r
end

-- {======================================================
-- The call path: each connection read and decoded once, with its policy
-- view, kept until an admin change that touches it or the tenant drops it.
-- db -> integration -> tenant_id -> row, or false (no connection).
-- =======================================================

local cached = setmetatable({}, { __mode = "k" })

-- Drop the cached connection of a tenant (every integration when
-- integration is nil; every tenant when tenant_id is nil too).
function M.invalidate(db, tenant_id, integration)
  local per = cached[db]
  if not per then return end
  for name, by in pairs(per) do
    if integration == nil or integration == name then
      if tenant_id == nil then per[name] = nil else by[tenant_id] = nil end
    end
  end
end

db_mod.on_tenant_change(function(db, tenant_id) M.invalidate(db, tenant_id) end)

-- For the call path: the tenant's connection, or nil and what the agent
-- should be told. The row is shared between calls: read it, never change it.
function M.for_call(db, integration, tenant_id)
  local per = cached[db]
  if not per then per = {}; cached[db] = per end
  local by = per[integration]
  if not by then by = {}; per[integration] = by end
  local conn = by[tenant_id]
  if conn == nil then
    local err
    conn, err = M.get(db, integration, tenant_id)
    if conn == nil and err then
      return nil, "The tenant's connection could not be read (storage unavailable). Try again later."
    end
    conn = conn or false
    by[tenant_id] = conn
  end
  local pkg = integrations.get(integration)
  local title = pkg and pkg.title or integration
  if not conn then
    return nil, ("%s is not connected for this tenant. An operator connects it with"
      .. " `switchboard admin %s connect`."):format(title, integration)
  end
  if conn.status ~= "active" then
    return nil, ("The tenant's %s connection needs attention (%s). Ask an operator to check it with"
      .. " `switchboard admin %s test` and update the key; do not retry until then.")
      :format(title, conn.status_reason or conn.status, integration)
  end
  return conn
end

-- What policies may read about the connection (computed once per cached
-- row): the package's view, with the integration and the switch.
function M.policy_view(integration, conn)
  if conn.policy_view then return conn.policy_view end
  local model = integrations.connection(integration)
  local v = model and model.policy_view and model.policy_view(conn) or {}
  v.integration = integration
  v.autonomous_sends = conn.autonomous_sends == true
  conn.policy_view = v
  return v
end

-- }======================================================

-- A client for the tenant's connection with its credential open in C.
-- opts: { blob, key_id } a key being validated (opened for this use only,
-- never cached). Returns client, lease (close it when done) or nil, err.
function M.open_client(rt, integration, tenant, conn, opts)
  opts = opts or {}
  local model = assert(integrations.connection(integration))
  local section = rt.cfg[integration] or {}
  local how = model.credential or {}
  local lease, err = credentials.open(rt, {
    integration = integration, tenant = tenant, field = model.FIELD,
    blob = opts.blob or conn.secret, user = opts.key_id or conn.key_id,
    kind = how.kind, header = how.header,
    seconds = opts.blob == nil and section.credential_seconds or 0,
  })
  if not lease then return nil, err end
  local ok, c = pcall(model.client, rt, conn, lease.cred, opts)
  if not ok or not c then
    lease:close()
    return nil, ok and "the client could not be made" or tostring(c)
  end
  return c, lease
end

-- Run fn(client) with the credential open, released after (also when fn
-- raises: the error is raised again). false, err when it does not open,
-- else true and what fn returned.
function M.with_client(rt, integration, tenant, conn, fn, opts)
  local c, h = M.open_client(rt, integration, tenant, conn, opts)
  if not c then return false, h end
  local res = table.pack(pcall(fn, c))
  h:close()
  if not res[1] then error(res[2], 0) end
  return true, table.unpack(res, 2, res.n)
end

-- Forget what is cached about a tenant's connection (the row and the
-- opened credential): after a change of key, status or settings.
function M.changed(db, integration, tenant_id, key_changed)
  M.invalidate(db, tenant_id, integration)
  if key_changed then credentials.forget(integration, tenant_id) end
end

-- {======================================================
-- Admin methods every integration has. Each package's install(admin) adds
-- its own; these are added for every package by M.install.
-- =======================================================

-- The tenant and its connection for an admin method, or a refusal.
function M.connected(admin, self, p, integration, what)
  local t = self:tenant(p, what)
  local conn, err = M.get(self.db, integration, t.id)
  if not conn and err then admin.refuse("could not read the connection: " .. tostring(err)) end
  if not conn then
    admin.refuse(("tenant '%s' has no %s connection; run `%s connect` first"):format(t.name,
      integrations.get(integration).title, integration))
  end
  return t, conn
end

-- Is the integration's feature among the tenant's features? (or refuse)
function M.require_feature(admin, t, pkg)
  if not pkg.feature then return end
  for _, f in ipairs(t.features) do
    if f == pkg.feature then return end
  end
  admin.refuse(("tenant '%s' does not have the feature %s: run `switchboard admin tenant features %s +%s` first")
    :format(t.name, pkg.feature, t.name, pkg.feature))
end

function M.install(admin, pkg)
  local refuse, methods, name = admin.refuse, admin.methods, pkg.name

  methods[name .. ".autonomous_sends"] = function(self, p)
    local t, conn = M.connected(admin, self, p, name, name .. " autonomous-sends")
    local want
    if p.value == "on" then want = true elseif p.value == "off" then want = false
    else refuse("autonomous-sends: give on or off", -32602) end
    if want and p.confirm ~= true then
      refuse("turning autonomous sends on needs --confirm: agents will then send messages and codes"
        .. " that cost money without a human confirming each one")
    end
    if want ~= conn.autonomous_sends then
      local stored, serr = repo.update(self.db, t.id, name, { autonomous_sends = want })
      M.changed(self.db, name, t.id)
      if not stored then
        refuse("could not store the setting; autonomous sends stay " .. (conn.autonomous_sends and "on" or "off")
          .. ": " .. tostring(serr))
      end
      directory.settings_audit(self.db, t.id, p.actor, name .. ".autonomous_sends",
        { autonomous_sends = conn.autonomous_sends }, { autonomous_sends = want })
    end
    return { tenant = t.name, autonomous_sends = want, changed = want ~= conn.autonomous_sends }
  end

  methods[name .. ".disconnect"] = function(self, p)
    local t, conn = M.connected(admin, self, p, name, name .. " disconnect")
    local ok, err = repo.delete(self.db, t.id, name, pkg.group)
    if not ok then refuse("could not remove the connection; it stays in force: " .. tostring(err)) end
    M.changed(self.db, name, t.id, true)
    local model = integrations.connection(name)
    local shown = model.disconnected and model.disconnected(conn) or { key_id = conn.key_id }
    directory.settings_audit(self.db, t.id, p.actor, name .. ".disconnect", shown, nil)
    self.server:refresh_agents(t.id)
    return { tenant = t.name, disconnected = true }
  end
end

-- }======================================================

return M
