-- Several runtimes on one PostgreSQL: what one node changes reaches the
-- others. Each node has an id of its own (random, per process); a change to
-- a tenant's settings (its agents, groups, features, connections) is
-- published on the channel sb_tenant as "<node> <tenant id>" once it is
-- committed (LISTEN/NOTIFY through store.pg's subscribe), and every other
-- node then drops what it cached of that tenant (the db module's
-- on_tenant_change hooks: the connections' call-path cache; the opened
-- credentials) and refreshes its live sessions of the tenant from the store
-- (a revoked agent's connections close, a changed tool view sends
-- list_changed). When the listening connection was lost and comes back,
-- notifications may have been missed: every tenant is refreshed.
-- On SQLite (one node) nothing here runs.
local vault = require("core.vault")
local log = require("switchboard.log")
local db_mod = require("switchboard.db")

local M = {}

M.CHANNEL = "sb_tenant"

-- This process's node id.
M.NODE = vault.sha256_hex(vault.random(32)):sub(1, 16)

-- Tell the other nodes that tenant_id changed (after the commit).
function M.publish(db, tenant_id)
  if not db_mod.is_pg(db) or tenant_id == nil then return true end
  local ok, err = db:notify(M.CHANNEL, ("%s %d"):format(M.NODE, tenant_id))
  if not ok then
    log.warn("cluster: the change of tenant %d could not be announced to the other nodes: %s", tenant_id,
      tostring(err))
  end
  return ok, err
end

-- What a node does when a tenant changed elsewhere (tenant_id nil: any).
local function apply(server, tenant_id)
  local db = server.db
  local credentials = require("switchboard.credentials")
  if tenant_id then
    db_mod.tenant_changed(db, tenant_id, true)
    for _, pkg in ipairs(require("switchboard.integrations").list()) do
      credentials.forget(pkg.name, tenant_id)
    end
    server:refresh_agents(tenant_id, true)
    return
  end
  local seen = {}
  require("switchboard.connections").invalidate(db, nil)
  credentials.forget_all()
  for s in pairs(server.sessions) do
    if s.tenant and not seen[s.tenant.id] then
      seen[s.tenant.id] = true
      server:refresh_agents(s.tenant.id, true)
    end
  end
end

-- Listen for the other nodes' changes (server: the running server).
function M.start(server)
  if not db_mod.is_pg(server.db) then return nil end
  server.cluster_sub = server.db:subscribe(M.CHANNEL, function(payload)
    if server.draining then return end
    if payload == nil then
      log.info("cluster: listening again after a lost connection: every tenant is refreshed")
      apply(server, nil)
      return
    end
    local node, id = payload:match("^(%S+) (%d+)$")
    if not node or node == M.NODE then return end
    local ok, err = pcall(apply, server, math.tointeger(tonumber(id)))
    if not ok then log.error("cluster: a change of tenant %s could not be applied: %s", id, tostring(err)) end
  end)
  return server.cluster_sub
end

return M
