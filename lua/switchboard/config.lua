-- The configuration: a Lua file returning a table. Every key is known here
-- with its type and default; an unknown key or a wrong type is refused at
-- start with the key's dotted name.
local integrations = require("switchboard.integrations")
local lfs = require("lfs")

local M = {}

-- spec: { type = "string"|"integer"|"number"|"boolean"|"table"|"list"|"map",
--         default = …, fields = {…} for "table", item = type for list/map }
local spec = {
  data_dir = { type = "string", default = "./var" },
  agent_socket = { type = "string", default = "./run/agent.sock" },
  agent_socket_mode = { type = "string", default = "0660", pattern = "^0?[0-7][0-7][0-7]$" },
  admin_socket = { type = "string", default = "./run/admin.sock" },
  master_key_file = { type = "string", default = "./var/master.key" },
  create_master_key = { type = "boolean", default = true },
  master_key_credential = { type = "string", pattern = "^[%w_@-][%w_.@-]*$" },
  tool_dirs = { type = "list", item = "string", default = {} },
  policy_dir = { type = "string", default = "@root/policies" },
  database = { type = "string", default = "@data/switchboard.db" },
  shutdown_seconds = { type = "number", default = 10, min = 0 },
  limits = { type = "table", fields = {
    connections = { type = "integer", default = 256, min = 1 },
    connections_per_uid = { type = "integer", default = 128, min = 1 },
    initialize_seconds = { type = "number", default = 10, min = 0.1 },
    batch_items = { type = "integer", default = 64, min = 1 },
    line_bytes = { type = "integer", default = 1048576, min = 1024 },
    idle_seconds = { type = "number", default = 300, min = 1 },
    call_seconds = { type = "number", default = 120, min = 1 },
    calls_per_connection = { type = "integer", default = 256, min = 1 },
    policy_instructions = { type = "integer", default = 1000000, min = 1000 },
    policy_memory = { type = "integer", default = 8388608, min = 65536 },
    result_bytes = { type = "integer", default = 4194304, min = 1024 },
  } },
  log = { type = "table", fields = {
    level = { type = "string", default = "info", enum = { "debug", "info", "warn", "error" } },
    file = { type = "string" },
    format = { type = "string", default = "text", enum = { "text", "json" } },
  } },
  -- MCP over Streamable HTTP, /healthz and /metrics: off unless listen is set
  http = { type = "table", fields = {
    listen = { type = "string", pattern = "^.+:%d+$" },
    tls_cert = { type = "string" },
    tls_key = { type = "string" },
    behind_tls_proxy = { type = "boolean", default = false },
    allowed_hosts = { type = "list", item = "string", default = {} },
    allowed_origins = { type = "list", item = "string", default = {} },
    metrics_token = { type = "string" },
    -- the runtime's address as providers reach it: a send whose integration
    -- takes status callbacks carries <public_url>/<integration>/status/…
    -- (delivery receipts); off when unset
    public_url = { type = "string", pattern = "^https?://[^%s/?#]+[^%s?#]*$" },
  } },
  -- The operator console (switchboard.console.server): off unless listen is set
  console = { type = "table", fields = {
    listen = { type = "string", pattern = "^.+:%d+$" },
    url = { type = "string", pattern = "^https?://[^%s/?#]+/?$" },
    tls_cert = { type = "string" },
    tls_key = { type = "string" },
    behind_tls_proxy = { type = "boolean", default = false },
    allowed_hosts = { type = "list", item = "string", default = {} },
    dir = { type = "string", default = "@root/console" },
    link_seconds = { type = "integer", default = 900, min = 10 },
    session_seconds = { type = "integer", default = 28800, min = 60 },
    page_size = { type = "integer", default = 20, min = 1 },
  } },
  -- several nodes on one PostgreSQL: a node's heartbeat every
  -- lease_seconds / 3; the open sends of a node silent for lease_seconds
  -- are taken over by another node (switchboard.sends)
  cluster = { type = "table", fields = {
    lease_seconds = { type = "number", default = 15, min = 0.5 },
  } },
  audit = { type = "table", fields = {
    bodies = { type = "string", default = "redacted", enum = { "full", "redacted", "hash" } },
    flush_ms = { type = "integer", default = 20, min = 0 },
    anchor_ms = { type = "integer", default = 250, min = 0 },
    anchor_file = { type = "string", default = "@data/audit.head" },
  } },
  tool_settings = { type = "map", item = "table", default = {} },
  policy_settings = { type = "map", item = "table", default = {} },
  -- where integration packages are found (switchboard.integrations); each
  -- package's own section is the top-level key named after it
  integration_dirs = { type = "list", item = "string", default = { "@root/integrations" } },
  -- OAuth 2.1 access tokens for remote MCP clients (switchboard.oauth); off
  -- unless issuer is set. The token's claims name the agent: the tenant is
  -- `tenant` (one tenant for every token) or the `tenant_claim` claim, the
  -- agent is the `agent_claim` claim's value, or agents[value] when the
  -- agents map is not empty; it must be an existing, unrevoked agent.
  oauth = { type = "table", fields = {
    issuer = { type = "string" },
    jwks_uri = { type = "string" },
    resource = { type = "string" },
    scopes = { type = "list", item = "string", default = {} },
    scopes_supported = { type = "list", item = "string", default = {} },
    algorithms = { type = "list", item = "string", default = {} }, -- empty: RS256, ES256
    leeway = { type = "number", default = 30, min = 0 },
    cache_seconds = { type = "number", default = 300, min = 0 },
    refetch_seconds = { type = "number", default = 30, min = 0 },
    fetch_timeout = { type = "number", default = 10, min = 1 },
    ca_file = { type = "string" },
    tenant = { type = "string" },
    tenant_claim = { type = "string", default = "sb_tenant" },
    agent_claim = { type = "string", default = "sub" },
    agents = { type = "map", item = "string", default = {} },
  } },
}
M.spec = spec

local function typename(v)
  local t = type(v)
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  return t
end

local function type_ok(want, v)
  local t = typename(v)
  if want == "number" then return t == "integer" or t == "number" end
  if want == "list" or want == "map" then return t == "table" end
  return t == want
end

local function check(fields, given, prefix, out)
  for k in pairs(given) do
    if type(k) ~= "string" or not fields[k] then
      return nil, ("config: unknown key '%s%s'"):format(prefix, tostring(k))
    end
  end
  for k, f in pairs(fields) do
    local name = prefix .. k
    local v = given[k]
    if v == nil then
      if f.type == "table" then
        local sub, err = check(f.fields, {}, name .. ".", {})
        if not sub then return nil, err end
        out[k] = sub
      elseif type(f.default) == "table" then
        out[k] = {}
      else
        out[k] = f.default
      end
    elseif not type_ok(f.type, v) then
      return nil, ("config: '%s' must be a %s, not a %s"):format(name, f.type, typename(v))
    elseif f.type == "table" then
      local sub, err = check(f.fields, v, name .. ".", {})
      if not sub then return nil, err end
      out[k] = sub
    elseif f.type == "list" then
      for i, item in ipairs(v) do
        if not type_ok(f.item, item) then
          return nil, ("config: '%s[%d]' must be a %s"):format(name, i, f.item)
        end
      end
      out[k] = v
    elseif f.type == "map" then
      for mk, item in pairs(v) do
        if type(mk) ~= "string" or not type_ok(f.item, item) then
          return nil, ("config: '%s.%s' must be a %s"):format(name, tostring(mk), f.item)
        end
      end
      out[k] = v
    else
      if f.min and v < f.min then
        return nil, ("config: '%s' must be at least %s"):format(name, f.min)
      end
      if f.enum then
        local found = false
        for _, e in ipairs(f.enum) do found = found or e == v end
        if not found then
          return nil, ("config: '%s' must be one of %s"):format(name, table.concat(f.enum, ", "))
        end
      end
      if f.pattern and not v:match(f.pattern) then
        return nil, ("config: '%s' has an invalid value %q"):format(name, v)
      end
      out[k] = v
    end
  end
  return out
end

-- What every integration's section has besides the fields its manifest
-- declares (manifest.config).
local INTEGRATION_FIELDS = {
  timeout = { type = "number", default = 30, min = 1 },
  ca_file = { type = "string" },
  credential_seconds = { type = "number", default = 300, min = 0 },
}

-- The spec with a section per discovered integration package.
local function with_integrations(given, root)
  local dirs = given.integration_dirs
  if dirs ~= nil and type(dirs) ~= "table" then
    return nil, "config: 'integration_dirs' must be a list of directories"
  end
  local expanded = {}
  for i, d in ipairs(dirs or spec.integration_dirs.default) do
    if type(d) ~= "string" then return nil, ("config: 'integration_dirs[%d]' must be a string"):format(i) end
    d = d:gsub("^@root", root)
    -- the default directory may be missing (a root without packages); a configured one may not
    if dirs or lfs.attributes(d, "mode") == "directory" then expanded[#expanded + 1] = d end
  end
  local list, err = integrations.load(expanded)
  if not list then return nil, "config: integration_dirs: " .. err end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  for _, pkg in ipairs(list) do
    if s[pkg.name] then
      return nil, ("config: integration '%s' has the name of a configuration key"):format(pkg.name)
    end
    local fields = {}
    for k, v in pairs(INTEGRATION_FIELDS) do fields[k] = v end
    for k, v in pairs(pkg.manifest.config or {}) do fields[k] = v end
    s[pkg.name] = { type = "table", fields = fields }
  end
  return s, expanded
end

-- The spec with the sections of the packages in root's integrations/ (for
-- documentation checks), or nil, err.
function M.full_spec(root)
  return with_integrations({}, root)
end

-- {======================================================
-- The store: the SQLite file at `database` (the default), or PostgreSQL:
--   store = "postgresql://user@host/dbname?host=/run/postgresql"  (a URL, no password)
--   store = { host = "/run/postgresql", port = 5432, dbname = "switchboard", user = "switchboard",
--             password_file = "/etc/switchboard/pg.password", pool_size = 4 }
--   store = { url = "postgresql://…", password_file = … }
-- The password is read from password_file (never a URL, a config value or argv).
-- cfg.store becomes { kind = "sqlite", path } or { kind = "pg", conninfo,
-- password_file, pool_size, connect_timeout }.
-- =======================================================

local STORE_FIELDS = {
  url = "string", host = "string", port = "integer", dbname = "string", user = "string",
  password_file = "string", pool_size = "integer", connect_timeout = "number",
}

-- A value in a libpq connection string: quoted, \ and ' escaped.
local function conninfo_value(v)
  return "'" .. tostring(v):gsub("\\", "\\\\"):gsub("'", "\\'") .. "'"
end

local function check_url(url, name)
  if not (url:match("^postgresql://") or url:match("^postgres://")) then
    return nil, ("config: '%s' must be a postgresql:// URL"):format(name)
  end
  local auth = url:match("^[^:]+://([^/?#]*)@")
  if auth and auth:find(":", 1, true) then
    return nil, ("config: '%s' must not hold a password: put it in store.password_file"):format(name)
  end
  if url:lower():find("[?&]password=") then
    return nil, ("config: '%s' must not hold a password: put it in store.password_file"):format(name)
  end
  return url
end

local function store_config(v, expand)
  if v == nil then return { kind = "sqlite" } end
  if type(v) == "string" then
    local url, err = check_url(v, "store")
    if not url then return nil, err end
    return { kind = "pg", conninfo = url, pool_size = 4 }
  end
  if type(v) ~= "table" then
    return nil, "config: 'store' must be a postgresql:// URL or a table (store.host, store.dbname, store.user)"
  end
  for k, val in pairs(v) do
    local want = STORE_FIELDS[k]
    if not want then return nil, ("config: unknown key 'store.%s'"):format(tostring(k)) end
    if not type_ok(want, val) then
      return nil, ("config: 'store.%s' must be a %s, not a %s"):format(k, want, typename(val))
    end
  end
  local out = { kind = "pg", pool_size = v.pool_size or 4, connect_timeout = v.connect_timeout,
                password_file = v.password_file and expand(v.password_file) }
  if out.pool_size < 1 then return nil, "config: 'store.pool_size' must be at least 1" end
  if v.url then
    if v.host or v.dbname or v.user or v.port then
      return nil, "config: 'store.url' and store.host/dbname/user/port exclude each other"
    end
    local url, err = check_url(v.url, "store.url")
    if not url then return nil, err end
    out.conninfo = url
    return out
  end
  for _, k in ipairs({ "host", "dbname", "user" }) do
    if type(v[k]) ~= "string" or v[k] == "" then
      return nil, ("config: 'store.%s' is required (or give store.url)"):format(k)
    end
  end
  local parts = {}
  for _, k in ipairs({ "host", "port", "dbname", "user" }) do
    if v[k] ~= nil then parts[#parts + 1] = k .. "=" .. conninfo_value(v[k]) end
  end
  out.conninfo = table.concat(parts, " ")
  return out
end

-- }======================================================

-- Validate a table against the spec, fill defaults; root expands "@root".
function M.build(given, root)
  given = given or {}
  local store_given = given.store
  if store_given ~= nil then
    local copy = {}
    for k, v in pairs(given) do if k ~= "store" then copy[k] = v end end
    given = copy
  end
  local full, dirs = with_integrations(given, root)
  if not full then return nil, dirs end
  local cfg, err = check(full, given, "", {})
  if not cfg then return nil, err end
  cfg.root = root
  cfg.integration_dirs = dirs
  local function expand(p)
    p = p:gsub("^@root", root):gsub("^@data", cfg.data_dir)
    return p
  end
  cfg.policy_dir = expand(cfg.policy_dir)
  cfg.database = expand(cfg.database)
  local store, serr = store_config(store_given, expand)
  if not store then return nil, serr end
  if store.kind == "sqlite" then store.path = cfg.database end
  cfg.store = store
  cfg.audit.anchor_file = expand(cfg.audit.anchor_file)
  cfg.console.dir = expand(cfg.console.dir)
  for i, d in ipairs(cfg.tool_dirs) do cfg.tool_dirs[i] = expand(d) end
  cfg.agent_socket_mode = tonumber(cfg.agent_socket_mode, 8)
  if cfg.http.public_url and not cfg.http.listen then
    return nil, "config: 'http.public_url' needs 'http.listen' (the listener status callbacks reach)"
  end
  return cfg
end

-- Load a config file (a Lua chunk returning a table) in a small environment.
function M.load(path, root)
  if not path then return M.build({}, root) end
  local env = { os = { getenv = os.getenv }, tonumber = tonumber, tostring = tostring,
                string = string, math = math, table = table, ipairs = ipairs, pairs = pairs }
  local chunk, err = loadfile(path, "t", env)
  if not chunk then return nil, "config: " .. err end
  local ok, given = pcall(chunk)
  if not ok then return nil, "config: " .. tostring(given) end
  if type(given) ~= "table" then
    return nil, ("config: %s must return a table"):format(path)
  end
  return M.build(given, root)
end

return M
