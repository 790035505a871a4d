-- `switchboard serve`: opens the store and the vault, loads tools and
-- policies, listens on the agent and admin sockets, and runs the loop.
-- SIGHUP reloads tools and policies; SIGTERM/SIGINT drain and stop.
-- Under systemd: sockets passed by name (LISTEN_FDNAMES "agent", "admin")
-- are served as they are, and READY/RELOADING/STOPPING/WATCHDOG are sent.
local loop = require("core.loop")
local notify = require("core.notify")
local vault = require("core.vault")
local lfs = require("lfs")
local fs = require("core.fs")
local log = require("switchboard.log")
local db_mod = require("switchboard.db")
local registry = require("switchboard.registry")
local integrations = require("switchboard.integrations")
local policy = require("switchboard.policy")
local audit = require("switchboard.audit")
local mcp = require("switchboard.mcp")
local directory = require("switchboard.directory")
local json = require("switchboard.json")
local metrics = require("switchboard.metrics")

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

local PRIVATE = tonumber("077", 8)

-- Run fn(...) with the file-creation mask 077: what it creates is for the
-- server's user only (directories 0700, files 0600). The mask is restored
-- whatever fn does.
local function private(fn, ...)
  local old = fs.umask(PRIVATE)
  local out = table.pack(pcall(fn, ...))
  fs.umask(old)
  if not out[1] then error(out[2], 0) end
  return table.unpack(out, 2, out.n)
end
M.private = private

-- Create the directories of path that are missing, mode 0700.
function M.private_dir(path)
  return private(mkdir_p, path)
end

-- The database and its -wal and -shm files must be the server's alone:
-- refuse to start on one that group or others may open, naming each.
local function check_database(path)
  local wide, modes = {}, {}
  for _, p in ipairs({ path, path .. "-wal", path .. "-shm" }) do
    local mode = fs.mode(p)
    if mode and mode & PRIVATE ~= 0 then
      wide[#wide + 1] = p
      modes[#modes + 1] = ("%s has mode %04o"):format(p, mode)
    end
  end
  if #wide > 0 then
    return nil, ("database: %s, which lets group or others open it: run chmod 600 %s")
      :format(table.concat(modes, ", "), table.concat(wide, " "))
  end
  return true
end

-- Warn about an existing directory or log file wider than it would be created.
local function warn_wide(what, path, mask, fix)
  local mode = fs.mode(path)
  if mode and mode & mask ~= 0 then
    log.warn("%s %s has mode %04o: others can read what is in it; run chmod %s %s", what, path, mode, fix, path)
  end
end

-- Open the vault's master key: the systemd credential named
-- master_key_credential (LoadCredential= / LoadCredentialEncrypted=, read
-- from $CREDENTIALS_DIRECTORY, never created), else master_key_file,
-- created on first start when allowed.
function M.open_master(cfg)
  if cfg.master_key_credential then
    local dir = os.getenv("CREDENTIALS_DIRECTORY")
    if not dir or dir == "" then
      return nil, ("master_key_credential is '%s' but $CREDENTIALS_DIRECTORY is not set: give the unit"
        .. " LoadCredentialEncrypted=%s:FILE (or LoadCredential=)"):format(cfg.master_key_credential,
        cfg.master_key_credential)
    end
    return vault.load_master(dir .. "/" .. cfg.master_key_credential)
  end
  local path = cfg.master_key_file
  if not lfs.attributes(path) and cfg.create_master_key then
    local ok, err = M.private_dir(dirname(path))
    if not ok then return nil, err end
    ok, err = vault.create_master(path)
    if not ok then return nil, err end
    log.warn("created a new master key in %s (mode 0600): back it up; sealed credentials cannot be opened without it", path)
  end
  return vault.load_master(path)
end

-- Each integration package's tools/ (with the package's group,
-- connection and instructions as defaults), then the configured tool_dirs.
function M:tool_dirs()
  local dirs = {}
  for _, pkg in ipairs(integrations.list()) do
    if pkg.tools_dir then dirs[#dirs + 1] = { dir = pkg.tools_dir, package = pkg } end
  end
  for _, d in ipairs(self.cfg.tool_dirs) do dirs[#dirs + 1] = d end
  return dirs
end

-- Load tools and policies; on failure keep what is in force. At start
-- (at_start true) a broken tool file is left out, logged with its error,
-- and the other tools are served; a reload that meets one is refused as
-- a whole. A broken policy always refuses: the policy set fails closed.
function M:load_code(at_start)
  policy.set_memory_ceiling(self.cfg.limits.policy_memory)
  local reg, err = registry.load(self:tool_dirs(), { skip_broken = at_start })
  if not reg then return nil, "tools: " .. err end
  for _, problem in ipairs(at_start and err or {}) do
    log.error("tools: left out %s", problem)
  end
  local pol, perr = policy.load(self.cfg.policy_dir, integrations.policy_settings(self.cfg.policy_settings),
    self.cfg.limits.policy_instructions)
  if not pol then return nil, "policies: " .. perr end
  self.registry, self.policies = reg, pol
  return true
end

function M:reload(actor)
  local old_names = self.policies and table.concat(self.policies:names(), ",")
  self:notify("RELOADING=1\nMONOTONIC_USEC=" .. notify.monotonic_usec())
  local ok, err = self:load_code()
  self:notify("READY=1")
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

-- Tell each session whose view of the tools changed, and each 2026-07-28
-- subscription (subscriptions/listen) whose agent's view changed.
function M:tools_changed()
  for s in pairs(self.sessions) do
    if s.agent and s.initialized_req then
      local fp = self.registry:view_fingerprint(s.agent.groups, s.tenant.enabled)
      if fp ~= s.fingerprint then
        s.fingerprint = fp
        s:notify("notifications/tools/list_changed")
      end
    end
    for _, sub in pairs(s.subscriptions or {}) do
      local v = sub.view
      local fp = self.registry:view_fingerprint(v.agent.groups, v.tenant.enabled)
      if fp ~= sub.fingerprint then
        sub.fingerprint = fp
        s:notify("notifications/tools/list_changed", { _meta = { [mcp.META_SUBSCRIPTION] = sub.id } })
      end
    end
  end
end

-- Refresh the agents of a tenant from the store (groups changed, revoked,
-- the tenant's features or connections changed); on PostgreSQL the other
-- nodes do the same (switchboard.cluster), unless the change came from one
-- of them (from_peer).
function M:refresh_agents(tenant_id, from_peer)
  if not from_peer then require("switchboard.cluster").publish(self.db, tenant_id) end
  local enabled = directory.tenant_groups(self.db, tenant_id)
  local t = directory.tenant_by_id(self.db, tenant_id)
  for s in pairs(self.sessions) do
    for k, sub in pairs(s.subscriptions or {}) do
      local v = sub.view
      if v.agent ~= s.agent and v.tenant.id == tenant_id then
        local row = directory.agent(self.db, tenant_id, v.agent.name)
        if not row or row.revoked_at then
          s.subscriptions[k] = nil
          if s.http then s:close() end
        else
          v.agent.groups, v.tenant.enabled = row.groups, enabled
        end
      end
    end
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
  self:notify("STOPPING=1")
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
  if self.http then self.http:close() end
  if self.console then self.console:close() end
  for s in pairs(self.sessions) do s:close() end
  self.audit:flush()
  for _, sig in ipairs(self.signals) do sig:close() end
  if self.watchdog then self.watchdog:close() end
  loop.stop()
end

-- A notification to the service manager (nothing outside systemd).
function M:notify(state)
  local ok, err = notify.send(state)
  if ok == nil and not self.notify_failed then
    self.notify_failed = true
    log.warn("systemd notification failed: %s", err)
  end
end

-- The sockets systemd passed (socket activation), by LISTEN_FDNAMES name.
-- Read once: the variables are unset after.
local function passed_sockets()
  local fds, err = notify.listen_fds()
  if not fds then return nil, "socket activation: " .. err end
  local by_name = {}
  for _, s in ipairs(fds) do
    if by_name[s.name] then
      log.warn("systemd passed two sockets named '%s': fd %d is used, fd %d is not", s.name, by_name[s.name], s.fd)
    else
      by_name[s.name] = s.fd
    end
  end
  return by_name
end

-- Listen for `name`: on the socket systemd passed under that name, used as
-- it is (never re-created or unlinked: its unit owns the file and its
-- mode), else on path with mode. Other listeners (HTTP) join by name.
function M:listen(name, path, mode, fn)
  local fd = self.passed[name]
  local l, err, where
  if fd then
    self.passed[name] = nil
    where = ("the %s socket passed by systemd (fd %d)"):format(name, fd)
    if notify.is_unix_listener(fd) then
      l, err = loop.listen_fd(fd, fn)
    else
      err = "not a listening Unix stream socket (ListenStream= with a path)"
    end
  else
    where = ("%s socket %s"):format(name, path)
    l, err = loop.listen(path, mode, fn)
  end
  if not l then return nil, ("%s: %s"):format(where, err) end
  self.listeners[#self.listeners + 1] = l
  self.where = self.where or {}
  self.where[name] = fd and ("%s (systemd fd %d)"):format(path, fd) or path
  return l
end

-- Start everything; returns the server or nil, err.
function M.start(cfg)
  local self = setmetatable({ cfg = cfg, sessions = {}, nsessions = 0, nconn = 0, inflight = 0, per_uid = {},
                              listeners = {}, signals = {} }, M)
  local perr
  self.passed, perr = passed_sockets()
  if not self.passed then return nil, perr end
  -- the data directory and the database's are the server's alone (0700);
  -- the socket directories keep the usual mode, for agent_socket_mode
  local ok, err = M.private_dir(cfg.data_dir)
  if not ok then return nil, err end
  warn_wide("data_dir", cfg.data_dir, tonumber("007", 8), "700")
  local sqlite = not cfg.store or cfg.store.kind ~= "pg"
  for _, p in ipairs(sqlite and { cfg.database, cfg.audit.anchor_file } or { cfg.audit.anchor_file }) do
    ok, err = M.private_dir(dirname(p))
    if not ok then return nil, err end
  end
  for _, p in ipairs({ cfg.agent_socket, cfg.admin_socket }) do
    ok, err = mkdir_p(dirname(p))
    if not ok then return nil, err end
  end
  if sqlite then
    ok, err = check_database(cfg.database)
    if not ok then return nil, err end
  end
  self.master, err = M.open_master(cfg)
  if not self.master then return nil, err end
  -- a new database is created 0600; SQLite gives its -wal and -shm files
  -- the database file's mode
  if sqlite then
    self.db, err = private(db_mod.open, cfg.database)
  else
    self.db, err = db_mod.open(cfg.store)
  end
  if not self.db then return nil, err end
  -- each integration package's own tables, if it has any
  for _, pkg in ipairs(integrations.list()) do
    if pkg.manifest.migrations then
      ok, err = require("switchboard.store.packages").migrate(self.db, pkg.name, pkg.manifest.migrations)
      if not ok then return nil, err end
    end
  end
  ok, err = self:load_code(true)
  if not ok then return nil, err end
  self.audit = audit.new(self.db, self.master, cfg.audit)
  -- /metrics counts calls from their audit records
  local record = self.audit.record
  self.audit.record = function(a, rec, ...)
    metrics.observe(rec)
    return record(a, rec, ...)
  end
  self.admin = require("switchboard.admin").new(self)
  require("switchboard.sends").recover(self)
  require("switchboard.cluster").start(self)

  local agent_l, lerr = self:listen("agent", cfg.agent_socket, cfg.agent_socket_mode, function(stream)
    self:accept_agent(stream)
  end)
  if not agent_l then return nil, lerr end
  local admin_l, aerr = self:listen("admin", cfg.admin_socket, tonumber("600", 8), function(stream)
    self.admin:serve(stream)
  end)
  if not admin_l then return nil, aerr end
  if cfg.http.listen or self.passed.http then
    local h, herr = require("switchboard.http_server").start(self)
    if not h then return nil, herr end
    self.http = h
  end
  if cfg.console.listen then
    local con, cerr = require("switchboard.console.server").start(self)
    if not con then return nil, cerr end
    self.console = con
  end
  for name in pairs(self.passed) do
    log.warn("systemd passed a socket named '%s' that nothing here serves (known: agent, admin, http)", name)
  end

  for _, name in ipairs({ "TERM", "INT" }) do
    self.signals[#self.signals + 1] = loop.signal(name, function() self:shutdown(name) end)
  end
  self.signals[#self.signals + 1] = loop.signal("HUP", function()
    -- logrotate moved the file: write to a new one at the same path
    local rok, rerr = log.reopen()
    if not rok then log.error("log.file could not be reopened: %s", rerr) end
    self:reload("SIGHUP")
  end)
  return self
end

function M.serve(cfg)
  -- most of what a call allocates dies young: the generational collector
  -- spends less time on it than the incremental one
  collectgarbage("generational")
  -- the data directory first: log.file may lie inside it
  local ok, lerr = M.private_dir(cfg.data_dir)
  if not ok then return nil, lerr end
  if cfg.log.file then
    ok, lerr = M.private_dir(dirname(cfg.log.file))
    if not ok then return nil, "log.file: " .. lerr end
  end
  ok, lerr = log.setup(cfg.log)
  if not ok then return nil, lerr end
  if cfg.log.file then warn_wide("log.file", cfg.log.file, tonumber("037", 8), "600") end
  loop.set_error_handler(function(msg) log.error("%s", msg) end)
  -- the start runs in a runtime coroutine on the loop: the PostgreSQL
  -- store's queries (the migrations, recovery) wait for their answers
  local self, err, started
  loop.spawn(function()
    local pok, s, serr = xpcall(M.start, debug.traceback, cfg)
    if pok then self, err = s, serr else self, err = nil, s end
    started = true
    if self then M.started(self) else loop.stop() end
  end)
  if not started or self then loop.run() end
  if not self then
    return nil, err
  end
  require("switchboard.credentials").forget_all()
  -- (PostgreSQL: the shutdown flushed it, in its coroutine)
  if not db_mod.is_pg(self.db) then self.audit:flush() end
  self.db:close()
  self.master:close()
  log.info("switchboard stopped")
  return true
end

-- What follows a start: the log line, systemd's READY=1 and its watchdog.
function M.started(self)
  log.info("switchboard serving: agents on %s, admin on %s; %d tools, %d policies",
    self.where.agent, self.where.admin, #self.registry.order, #self.policies.list)
  self:notify(("READY=1\nSTATUS=serving %d tools, %d policies"):format(#self.registry.order, #self.policies.list))
  local wd = notify.watchdog()
  if wd then
    -- twice per interval, as sd_watchdog_enabled(3) advises
    self.watchdog = loop.timer(wd / 2, wd / 2, function() self:notify("WATCHDOG=1") end)
  end
end

return M
