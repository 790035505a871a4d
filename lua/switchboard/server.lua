-- `switchboard serve`: opens the store and the vault, loads tools and
-- policies, listens on the agent and admin sockets, and runs the loop.
-- SIGHUP reloads tools and policies; SIGTERM/SIGINT drain and stop.
local loop = require("core.loop")
local vault = require("core.vault")
local lfs = require("lfs")
local log = require("switchboard.log")
local db_mod = require("switchboard.db")
local registry = require("switchboard.registry")
local policy = require("switchboard.policy")
local audit = require("switchboard.audit")
local mcp = require("switchboard.mcp")
local directory = require("switchboard.directory")
local json = require("switchboard.json")

local M = {}
M.__index = M

local function mkdir_p(path)
  local sofar = path:sub(1, 1) == "/" and "" or "."
  for part in path:gmatch("[^/]+") do
    sofar = sofar .. "/" .. part
    if not lfs.attributes(sofar) then
      local ok, err = lfs.mkdir(sofar)
      if not ok then return nil, ("cannot create %s: %s"):format(sofar, err) end
    end
  end
  return true
end
M.mkdir_p = mkdir_p

local function dirname(p)
  return p:match("^(.*)/[^/]*$") or "."
end

-- Open the vault's master key, creating it on first start when allowed.
function M.open_master(cfg)
  local path = cfg.master_key_file
  if not lfs.attributes(path) and cfg.create_master_key then
    local ok, err = mkdir_p(dirname(path))
    if not ok then return nil, err end
    ok, err = vault.create_master(path)
    if not ok then return nil, err end
    log.warn("created a new master key in %s (mode 0600): back it up; sealed credentials cannot be opened without it", path)
  end
  return vault.load_master(path)
end

function M:tool_dirs()
  local dirs = {}
  local builtin = self.cfg.root .. "/lua/tools"
  if lfs.attributes(builtin, "mode") == "directory" then dirs[#dirs + 1] = builtin end
  for _, d in ipairs(self.cfg.tool_dirs) do dirs[#dirs + 1] = d end
  return dirs
end

-- Load tools and policies; on failure keep what is in force.
function M:load_code()
  policy.set_memory_ceiling(self.cfg.limits.policy_memory)
  local reg, err = registry.load(self:tool_dirs())
  if not reg then return nil, "tools: " .. err end
  local pol, perr = policy.load(self.cfg.policy_dir, self.cfg.policy_settings,
    self.cfg.limits.policy_instructions)
  if not pol then return nil, "policies: " .. perr end
  self.registry, self.policies = reg, pol
  return true
end

function M:reload(actor)
  local old_names = self.policies and table.concat(self.policies:names(), ",")
  local ok, err = self:load_code()
  if not ok then
    log.error("reload refused, the previous tools and policies stay in force: %s", err)
    directory.settings_audit(self.db, nil, actor or "signal", "reload.refused", nil, { error = err })
    return nil, err
  end
  log.info("reloaded %d tools and %d policies", #self.registry.order, #self.policies.list)
  directory.settings_audit(self.db, nil, actor or "signal", "reload",
    { policies = old_names }, { policies = table.concat(self.policies:names(), ","),
                                tools = #self.registry.order })
  self:tools_changed()
  return true
end

-- Tell each session whose view of the tools changed.
function M:tools_changed()
  for s in pairs(self.sessions) do
    if s.agent then
      local fp = self.registry:view_fingerprint(s.agent.groups, s.tenant.enabled)
      if fp ~= s.fingerprint then
        s.fingerprint = fp
        s:notify("notifications/tools/list_changed")
      end
    end
  end
end

-- Refresh the agents of a tenant from the store (groups changed, revoked,
-- the tenant's features or connections changed).
function M:refresh_agents(tenant_id)
  local enabled = directory.tenant_groups(self.db, tenant_id)
  local t = directory.tenant_by_id(self.db, tenant_id)
  for s in pairs(self.sessions) do
    if s.agent and s.tenant.id == tenant_id then
      local row = directory.agent(self.db, tenant_id, s.agent.name)
      if not row or row.revoked_at then
        log.info("mcp: connection %d: agent %s was revoked, closing", s.n, s.agent.name)
        s:close()
      else
        s.agent.groups = row.groups
        s.tenant.enabled = enabled
        if t then s.tenant.features = t.features end
        s.agent.default_tier = row.default_tier
        s.agent.trusted_sender = row.trusted_sender
      end
    end
  end
  self:tools_changed()
end

function M:forget(session)
  if self.sessions[session] then
    self.sessions[session] = nil
    self.nsessions = self.nsessions - 1
    local uid = session.uid
    if uid ~= nil then
      local n = (self.per_uid[uid] or 1) - 1
      self.per_uid[uid] = n > 0 and n or nil
    end
  end
end

function M:call_done()
  if self.draining and self.inflight == 0 and self.drain_waiter then
    loop.wake(self.drain_waiter)
  end
end

local function refuse_connection(stream, message)
  stream:write('{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":' .. json.encode(message) .. '}}\n')
  stream:flush(1)
  stream:close()
end

-- A new agent connection: refused when the server is full or the peer's
-- uid (SO_PEERCRED) already holds limits.connections_per_uid, so that one
-- local user cannot take every slot.
function M:accept_agent(stream)
  if self.draining then stream:close() return end
  self.nconn = self.nconn + 1
  local n = self.nconn
  local limits = self.cfg.limits
  if self.nsessions >= limits.connections then
    log.warn("mcp: refusing connection %d: %d connections open (limits.connections)", n, self.nsessions)
    return refuse_connection(stream, "server busy: too many connections")
  end
  local _, uid = stream:peercred()
  if uid == nil then
    log.warn("mcp: refusing connection %d: the peer's credentials could not be read", n)
    return refuse_connection(stream, "the peer's credentials could not be read")
  end
  if (self.per_uid[uid] or 0) >= limits.connections_per_uid then
    log.warn("mcp: refusing connection %d: uid %d has %d connections open (limits.connections_per_uid)",
      n, uid, self.per_uid[uid])
    return refuse_connection(stream, ("too many connections from this user (at most %d:"
      .. " limits.connections_per_uid)"):format(limits.connections_per_uid))
  end
  local s = mcp.new(self, stream, n)
  s.uid = uid
  self.sessions[s] = true
  self.nsessions = self.nsessions + 1
  self.per_uid[uid] = (self.per_uid[uid] or 0) + 1
  s:serve()
end

function M:shutdown(signame)
  if self.draining then return end
  self.draining = true
  log.info("received SIG%s: stopping; %d calls in flight", signame, self.inflight)
  for _, l in ipairs(self.listeners) do l:close() end
  if self.inflight > 0 then
    self.drain_waiter = coroutine.running()
    local deadline = loop.timer(self.cfg.shutdown_seconds, 0, function()
      if self.drain_waiter then loop.wake(self.drain_waiter) end
    end)
    loop.wait()
    self.drain_waiter = nil
    deadline:close()
    if self.inflight > 0 then
      log.warn("shutdown deadline reached with %d calls in flight", self.inflight)
    end
  end
  for s in pairs(self.sessions) do s:close() end
  self.audit:flush()
  for _, sig in ipairs(self.signals) do sig:close() end
  loop.stop()
end

-- Start everything; returns the server or nil, err.
function M.start(cfg)
  local self = setmetatable({ cfg = cfg, sessions = {}, nsessions = 0, nconn = 0, inflight = 0, per_uid = {},
                              listeners = {}, signals = {} }, M)
  local ok, err = mkdir_p(cfg.data_dir)
  if not ok then return nil, err end
  for _, p in ipairs({ cfg.agent_socket, cfg.admin_socket, cfg.database, cfg.audit.anchor_file }) do
    ok, err = mkdir_p(dirname(p))
    if not ok then return nil, err end
  end
  self.master, err = M.open_master(cfg)
  if not self.master then return nil, err end
  self.db, err = db_mod.open(cfg.database)
  if not self.db then return nil, err end
  ok, err = self:load_code()
  if not ok then return nil, err end
  self.audit = audit.new(self.db, self.master, cfg.audit)
  self.admin = require("switchboard.admin").new(self)
  require("switchboard.sends").recover(self)

  local agent_l, lerr = loop.listen(cfg.agent_socket, cfg.agent_socket_mode, function(stream)
    self:accept_agent(stream)
  end)
  if not agent_l then return nil, ("agent socket %s: %s"):format(cfg.agent_socket, lerr) end
  self.listeners[#self.listeners + 1] = agent_l
  local admin_l, aerr = loop.listen(cfg.admin_socket, tonumber("600", 8), function(stream)
    self.admin:serve(stream)
  end)
  if not admin_l then return nil, ("admin socket %s: %s"):format(cfg.admin_socket, aerr) end
  self.listeners[#self.listeners + 1] = admin_l

  for _, name in ipairs({ "TERM", "INT" }) do
    self.signals[#self.signals + 1] = loop.signal(name, function() self:shutdown(name) end)
  end
  self.signals[#self.signals + 1] = loop.signal("HUP", function() self:reload("SIGHUP") end)
  return self
end

function M.serve(cfg)
  -- most of what a call allocates dies young: the generational collector
  -- spends less time on it than the incremental one
  collectgarbage("generational")
  local ok, lerr = log.setup(cfg.log)
  if not ok then return nil, lerr end
  loop.set_error_handler(function(msg) log.error("%s", msg) end)
  local self, err = M.start(cfg)
  if not self then return nil, err end
  log.info("switchboard serving: agents on %s, admin on %s; %d tools, %d policies",
    cfg.agent_socket, cfg.admin_socket, #self.registry.order, #self.policies.list)
  loop.run()
  self.audit:flush()
  self.db:close()
  self.master:close()
  log.info("switchboard stopped")
  return true
end

return M
