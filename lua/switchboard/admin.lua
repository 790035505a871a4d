-- The admin socket (mode 0600): JSON-RPC 2.0, one object per line. Each
-- method checks its parameters, is scoped by tenant, and writes settings
-- changes to the settings audit with who made them.
local json = require("switchboard.json")
local log = require("switchboard.log")
local directory = require("switchboard.directory")
local agents_store = require("switchboard.store.agents")
local tenants_store = require("switchboard.store.tenants")

local integrations = require("switchboard.integrations")
local connections = require("switchboard.connections")

local M = {}
M.__index = M

local BAD = -32602

-- An error the operator can act on: raised inside a method, answered as
-- a JSON-RPC error with the message.
local function refuse(msg, code)
  error({ admin_error = msg, code = code or -32000 }, 0)
end
M.refuse = refuse

local function need_string(p, key, what)
  local v = p[key]
  if type(v) ~= "string" or v == "" then refuse(("%s: '%s' is required"):format(what, key), BAD) end
  return v
end
M.need_string = need_string

function M:tenant(p, what)
  local name = need_string(p, "tenant", what)
  local t = directory.tenant(self.db, name)
  if not t then refuse(("no tenant named '%s'"):format(name)) end
  return t
end

local function agent_view(a)
  return { id = a.id, tenant = a.tenant or a.tenant_name, name = a.name, type = a.type,
           groups = json.array(a.groups), default_tier = a.default_tier,
           trusted_sender = a.trusted_sender, token_hint = a.token_hint,
           status = a.revoked_at and "revoked" or "active", revoked_at = a.revoked_at,
           created_at = a.created_at }
end

-- Find an agent by name, in the given tenant or (when unique) in any.
function M:agent(p, what)
  local name = need_string(p, "agent", what)
  if p.tenant then
    local t = self:tenant(p, what)
    local a = directory.agent(self.db, t.id, name)
    if not a then refuse(("no agent '%s' in tenant '%s'"):format(name, t.name)) end
    return a, t
  end
  local ids = assert(agents_store.tenants_with(self.db, name))
  if #ids == 0 then refuse(("no agent named '%s'"):format(name)) end
  if #ids > 1 then refuse(("several tenants have an agent named '%s': add --tenant"):format(name)) end
  local t = directory.tenant_by_id(self.db, ids[1])
  return directory.agent(self.db, t.id, name), t
end

-- Apply "+name" / "-name" edits to a list; returns the new list.
local function edit_list(list, edits, what)
  local set, order = {}, {}
  for _, v in ipairs(list) do
    if not set[v] then set[v] = true; order[#order + 1] = v end
  end
  if type(edits) ~= "table" then refuse(what .. ": give edits such as +name or -name", BAD) end
  for _, e in ipairs(edits) do
    local op, name = tostring(e):match("^([%+%-]?)(.+)$")
    if not name or name == "" then refuse(what .. ": empty name", BAD) end
    if op == "-" then
      if set[name] then
        set[name] = nil
        for i, v in ipairs(order) do if v == name then table.remove(order, i) break end end
      end
    elseif not set[name] then
      set[name] = true
      order[#order + 1] = name
    end
  end
  return order
end
M.edit_list = edit_list

-- {======================================================
-- Pages: the long lists answer one page at a time, newest first, keyset
-- on an indexed id. `limit` is the page's size; `after` is the cursor the
-- previous page answered as `next` (an opaque string; null at the end).
-- =======================================================

M.PAGE, M.MAX_PAGE = 50, 500
M.PAGE_BYTES = 1048576     -- a page ends early past this many bytes of records

-- The page size of p.limit (default M.PAGE).
function M.page_limit(p, what, default, max)
  max = max or M.MAX_PAGE
  if p.limit == nil then return default or M.PAGE end
  local n = math.tointeger(tonumber(p.limit))
  if not n or n < 1 or n > max then
    refuse(("%s: --limit must be a whole number from 1 to %d"):format(what, max), BAD)
  end
  return n
end

-- A cursor: tag, then whole numbers. cursor("st1", 42) == "st1-42".
function M.cursor(tag, ...)
  local parts = { tag }
  for _, v in ipairs({ ... }) do parts[#parts + 1] = ("%d"):format(v) end
  return table.concat(parts, "-")
end

-- The numbers of p.after when it is a cursor of tag with n numbers, nil
-- when no cursor was given; refuses anything else.
function M.read_cursor(p, tag, n, what)
  if p.after == nil or p.after == json.null then return nil end
  local s = p.after
  local digits = type(s) == "string" and #s <= 200
    and { s:match("^" .. tag:gsub("%W", "%%%0") .. ("%-(%d+)"):rep(n) .. "$") } or {}
  local out = {}
  for i = 1, n do
    local v = digits[i] and #digits[i] <= 18 and math.tointeger(tonumber(digits[i]))
    if not v then
      refuse(("%s: --after must be the cursor a previous page of this list answered as 'next'"):format(what), BAD)
    end
    out[i] = v
  end
  return table.unpack(out, 1, n)
end

-- }======================================================

M.methods = {}
local methods = M.methods

methods["tenant.add"] = function(self, p)
  local name = need_string(p, "name", "tenant add")
  local t, err = directory.add_tenant(self.db, self.server.master, name)
  if not t then refuse(err) end
  directory.settings_audit(self.db, t.id, p.actor, "tenant.add", nil, { name = name })
  return { id = t.id, name = t.name, features = json.array(t.features), created_at = t.created_at }
end

methods["tenant.list"] = function(self)
  local out = {}
  for _, t in ipairs(directory.tenants(self.db)) do
    local n = agents_store.count_live(self.db, t.id)
    out[#out + 1] = { id = t.id, name = t.name, features = json.array(t.features),
                      agents = n or 0, created_at = t.created_at }
  end
  return { tenants = json.array(out) }
end

methods["tenant.features"] = function(self, p)
  local t = self:tenant(p, "tenant features")
  local new = t.features
  if p.edits and #p.edits > 0 then
    for _, e in ipairs(p.edits) do
      if not tostring(e):match("^[%+%-]?[%w][%w_%.%-]*$") then
        refuse(("tenant features: '%s' is not a feature code (letters, digits, '.', '_', '-')"):format(tostring(e)), BAD)
      end
    end
    new = edit_list(t.features, p.edits, "tenant features")
    assert(directory.set_features(self.db, t, new))
    directory.settings_audit(self.db, t.id, p.actor, "tenant.features", t.features, new)
    self.server:refresh_agents(t.id)
  end
  return { tenant = t.name, features = json.array(new) }
end

methods["agent.add"] = function(self, p)
  local t = self:tenant(p, "agent add")
  local groups = p.groups or {}
  if type(groups) ~= "table" then refuse("agent add: 'groups' must be a list", BAD) end
  local a, token = directory.add_agent(self.db, t, { name = p.name, type = p.type, groups = groups,
    default_tier = p.default_tier, trusted_sender = p.trusted_sender == true })
  if not a then refuse(a == nil and token or "could not add the agent") end
  directory.settings_audit(self.db, t.id, p.actor, "agent.add", nil,
    { name = a.name, type = a.type, groups = a.groups, default_tier = a.default_tier })
  local view = agent_view(a)
  view.tenant = t.name
  view.token = token
  return view
end

methods["agent.list"] = function(self, p)
  local tid
  if p.tenant then tid = self:tenant(p, "agent list").id end
  local out = {}
  for _, a in ipairs(directory.agents(self.db, tid)) do out[#out + 1] = agent_view(a) end
  return { agents = json.array(out) }
end

methods["agent.revoke"] = function(self, p)
  local a, t = self:agent(p, "agent revoke")
  local r, err = directory.revoke_agent(self.db, t, a.name)
  if not r then refuse(err) end
  directory.settings_audit(self.db, t.id, p.actor, "agent.revoke", { status = "active" }, { status = "revoked", name = a.name })
  self.server:refresh_agents(t.id)
  local view = agent_view(r)
  view.tenant = t.name
  return view
end

methods["agent.groups"] = function(self, p)
  local a, t = self:agent(p, "agent groups")
  local new = a.groups
  if p.edits and #p.edits > 0 then
    new = edit_list(a.groups, p.edits, "agent groups")
    if self.validate_groups then self.validate_groups(self, t, a, new) end
    assert(directory.set_groups(self.db, a, new))
    directory.settings_audit(self.db, t.id, p.actor, "agent.groups", a.groups, new)
    self.server:refresh_agents(t.id)
  end
  return { tenant = t.name, agent = a.name, groups = json.array(new) }
end

methods["server.reload"] = function(self, p)
  local ok, err = self.server:reload(p.actor)
  if not ok then refuse("reload refused, the previous tools and policies stay in force: " .. err) end
  return { tools = #self.server.registry.order, policies = json.array(self.server.policies:names()) }
end

methods["server.status"] = function(self)
  local s = self.server
  return { connections = s.nsessions, inflight = s.inflight,
           tools = json.array(s.registry.order), policies = json.array(s.policies:names()) }
end

-- `admin backup FILE`: a consistent copy of the database while serving
-- (switchboard.backup: the online backup API, yielding between steps).
methods["server.backup"] = function(self, p)
  local path = need_string(p, "path", "backup")
  if path:sub(1, 1) ~= "/" then refuse("backup: 'path' must be an absolute path", BAD) end
  self.server.audit:flush()
  local pages = p.pages
  if pages ~= nil and (math.type(pages) ~= "integer" or pages < 1 or pages > 1000000) then
    refuse("backup: 'pages' must be an integer from 1 to 1000000", BAD)
  end
  local backup = require("switchboard.backup")
  local r, err = backup.online(self.db, path, pages)
  if not r then refuse("backup: " .. err) end
  local a, aerr = backup.write_anchor(path, self.server.master)
  if not a then refuse(("backup: %s is complete, but its anchor %s.head could not be written: %s"):format(path,
    path, aerr)) end
  directory.settings_audit(self.db, nil, p.actor, "server.backup", nil, { path = path, pages = r.pages,
    records = a.id })
  return { path = path, anchor = path .. ".head", records = a.id, pages = r.pages, steps = r.steps }
end

-- {======================================================
-- `admin vault rotate` / `admin vault retire VERSION`: master key versions.
-- Both write the key file (a key set, mode 0600, replaced atomically) while
-- serving; the settings audit gets who and the versions, never a key.
-- =======================================================

local function key_file(self, what)
  local cfg = self.server.cfg
  if cfg.master_key_credential then
    refuse(("%s: the master key is the systemd credential '%s', which this server cannot rewrite;"
      .. " stop the server, rotate a key file (master_key_file) and encrypt it again with systemd-creds")
      :format(what, cfg.master_key_credential))
  end
  return cfg.master_key_file
end

-- The live sessions still holding a data key wrapped under version.
local function sessions_on_version(self, version)
  local n = 0
  for s in pairs(self.server.sessions or {}) do
    local dk = s.tenant and s.tenant.data_key
    if dk and self.server.master:key_version(dk) == version then n = n + 1 end
  end
  return n
end

methods["vault.rotate"] = function(self, p)
  local master = self.server.master
  local path = key_file(self, "vault rotate")
  local before, previous = master:versions()
  local version, err = master:rotate(path)
  if not version then refuse("vault rotate: " .. err) end
  local r, rerr = directory.rewrap_all(self.db, master)
  if r then
    -- the sessions hold the wrapped key they authenticated with: give them
    -- the new one (the data key, and the credentials opened with it, stay)
    for s in pairs(self.server.sessions or {}) do
      local w = s.tenant and r.rewrapped[s.tenant.id]
      if w then s.tenant.data_key = w end
    end
  end
  local leftovers = {}
  for _, t in ipairs(assert(tenants_store.not_on_version(self.db, version))) do
    leftovers[#leftovers + 1] = { tenant = t.name, version = t.data_key_version }
  end
  local held = master:versions()
  directory.settings_audit(self.db, nil, p.actor, "vault.rotate", { versions = json.array(before), primary = previous },
    { versions = json.array(held), primary = version, rewrapped = r and r.count or 0, leftovers = #leftovers })
  if not r then
    log.error("vault rotate: key version %d added, but %s", version, rerr)
    refuse(("vault rotate: key version %d is now the primary and in %s, but the tenants' data keys are still"
      .. " under the older versions: %s; run vault rotate again"):format(version, path, rerr))
  end
  for _, f in ipairs(r.failed) do
    log.warn("vault rotate: the data key of tenant %s (version %s) could not be rewrapped: %s", f.tenant,
      tostring(f.version), tostring(f.why))
  end
  return { version = version, previous = previous, versions = json.array(held), rewrapped = r.count,
           leftovers = json.array(leftovers) }
end

methods["vault.retire"] = function(self, p)
  local master = self.server.master
  local version = math.tointeger(tonumber(p.version))
  if not version or version < 1 then
    refuse("vault retire: 'version' must be a whole number from 1 (a version vault rotate reported)", BAD)
  end
  local path = key_file(self, "vault retire")
  local held, primary = master:versions()
  local found = false
  for _, v in ipairs(held) do found = found or v == version end
  if not found then
    refuse(("vault retire: the master key holds no version %d (it holds %s)"):format(version,
      table.concat(held, ", ")))
  end
  if version == primary then
    refuse(("vault retire: version %d is the primary key; run vault rotate first"):format(version))
  end
  local tenants = directory.tenants_on_version(self.db, master, version)
  local live = sessions_on_version(self, version)
  if #tenants > 0 or live > 0 then
    refuse(("vault retire: key version %d is still in use: it wraps the data keys of %d tenant%s (%s) and"
      .. " %d connection%s; run vault rotate to rewrap them"):format(version, #tenants, #tenants == 1 and "" or "s",
      table.concat(tenants, ", "), live, live == 1 and "" or "s"))
  end
  local ok, err = master:retire(path, version)
  if not ok then refuse("vault retire: " .. err) end
  local now = master:versions()
  directory.settings_audit(self.db, nil, p.actor, "vault.retire", { versions = json.array(held) },
    { versions = json.array(now), retired = version })
  return { retired = version, versions = json.array(now), primary = primary }
end

-- }======================================================

require("switchboard.escalations").install(M)
require("switchboard.executions").install(M)
require("switchboard.console.admin").install(M)

-- Each integration package's admin methods: the ones every integration
-- has (switchboard.connections) and its own (its connection model's
-- install), added once per package.
local installed = {}
local function install_integrations()
  for _, pkg in ipairs(integrations.list()) do
    if not installed[pkg.name] then
      installed[pkg.name] = true
      connections.install(M, pkg)
      local model, err = integrations.connection(pkg.name)
      if not model then error(("integration %s: its connection model does not load: %s"):format(pkg.name, err), 0) end
      if model.install then model.install(M) end
    end
  end
end

-- The installed integrations, for the console: each package's
-- descriptor (its connection model's CONSOLE, or the manifest's console:
-- fields, tabs, usage) with the manifest's name, title, group and feature,
-- and the admin methods every connection has.
methods["integrations.list"] = function()
  local out = {}
  for _, pkg in ipairs(integrations.list()) do
    local model = integrations.connection(pkg.name)
    local d = {}
    for k, v in pairs((model and model.CONSOLE) or pkg.manifest.console or {}) do d[k] = v end
    d.name, d.title, d.group, d.feature = pkg.name, pkg.title, pkg.group, pkg.feature or json.null
    d.description = pkg.manifest.description
    local m = {}
    for _, verb in ipairs({ "connect", "show", "test", "update", "disconnect", "autonomous_sends" }) do
      m[verb] = methods[pkg.name .. "." .. verb] and (pkg.name .. "." .. verb) or nil
    end
    for k, v in pairs(d.methods or {}) do m[k] = v end
    d.methods = m
    d.fields = json.array(d.fields or {})
    d.tabs = json.array(d.tabs or {})
    out[#out + 1] = d
  end
  return { integrations = json.array(out) }
end

function M.new(server)
  install_integrations()
  return setmetatable({ server = server, db = server.db }, M)
end

-- ctx (optional): { notify = function(method, params) } sends a
-- notification on the request's connection before its answer (progress).
function M:handle(msg, peer, ctx)
  if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" or type(msg.method) ~= "string" then
    return { id = type(msg) == "table" and msg.id or json.null,
             error = { code = -32600, message = "invalid request" } }
  end
  local fn = methods[msg.method]
  if not fn then
    return { id = msg.id, error = { code = -32601, message = "unknown admin method: " .. msg.method } }
  end
  local p = type(msg.params) == "table" and msg.params or {}
  -- who: the socket peer's uid (authority) and the name the CLI gives,
  -- or the console's login (peer.actor, set by the console only)
  if peer.actor then
    p.actor = peer.actor
  else
    p.actor = ("uid %s%s"):format(tostring(peer.uid),
      type(p.actor) == "string" and p.actor ~= "" and (" (" .. p.actor:sub(1, 64) .. ")") or "")
  end
  local ok, res = pcall(fn, self, p, ctx or {})
  -- the settings changes this request made are committed before it is answered
  self.server.audit:flush()
  if ok then return { id = msg.id, result = res } end
  if type(res) == "table" and res.admin_error then
    return { id = msg.id, error = { code = res.code, message = res.admin_error } }
  end
  log.error("admin %s failed: %s", msg.method, tostring(res))
  return { id = msg.id, error = { code = -32603, message = "internal error (see the server log)" } }
end

-- The answer as a line, never raising: an answer that cannot be encoded
-- (an id such as 1e400) becomes an error without the id.
local function encode(res)
  res.jsonrpc = "2.0"
  local ok, line = pcall(json.encode, res)
  if ok then return line end
  log.error("admin: could not encode an answer: %s", tostring(line))
  return '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":'
    .. '"invalid request: the id must be a string or an integer, and the answer could not be encoded"}}'
end

function M:serve_lines(stream, peer)
  while true do
    local line, err = stream:read_line(1048576, 600)
    if not line then
      if err ~= "line too long" then break end
      if not stream:write('{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"request too large"}}\n') then
        break
      end
    elseif not line:match("^%s*$") then
      local msg, derr = json.decode(line)
      local res
      if msg == nil then
        res = { id = json.null, error = { code = -32700, message = "parse error: " .. tostring(derr) } }
      else
        res = self:handle(msg, peer, { notify = function(method, params)
          return stream:write(encode({ method = method, params = params }) .. "\n")
        end })
      end
      if not stream:write(encode(res) .. "\n") then break end
    end
  end
end

-- One admin connection; whatever error ends it, the stream is closed.
function M:serve(stream)
  local _, uid = stream:peercred()
  local ok, err = xpcall(self.serve_lines, debug.traceback, self, stream, { uid = uid })
  if not ok then log.error("admin: the connection failed and was closed: %s", tostring(err)) end
  stream:close()
end

return M
