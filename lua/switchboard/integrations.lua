-- Integration packages: one folder per integration (Kong's plugin model).
-- The core knows packages, not any one of them. A package is a directory
-- <dir>/<name>/ found in the configured integration_dirs, holding:
--
--   init.lua        the manifest (checked here; see M.check)
--   connection.lua  its connection model: validation against the provider,
--                   open_client, the policy view, install(admin) for its
--                   admin methods
--   tools/          its tool files (group, connection and instructions
--                   default to the manifest's)
--   …               anything else it names in the manifest (cli, sim,
--                   receipts, reconcile hooks, metrics, its own tables as
--                   `migrations` (switchboard.store.packages), tests)
--
-- Its modules are required as integrations.<name>.<module>: a package in
-- the built-in directory (<root>/integrations) is found on package.path,
-- one elsewhere through the searcher installed here.
local lfs = require("lfs")

local M = {}

local packages = {}   -- name -> package
local order = {}      -- names, sorted
local dirs_of = {}    -- name -> directory (for the searcher)

local function searcher(modname)
  local name, rest = modname:match("^integrations%.([%l][%l%d_]*)%.?(.*)$")
  local dir = name and dirs_of[name]
  if not dir then return nil end
  local base = rest == "" and dir .. "/init" or dir .. "/" .. rest:gsub("%.", "/")
  local tried = {}
  for _, path in ipairs({ base .. ".lua", base .. "/init.lua" }) do
    if lfs.attributes(path, "mode") == "file" then
      local chunk, err = loadfile(path, "t")
      if not chunk then error(("error loading module '%s' from %s:\n\t%s"):format(modname, path, err), 0) end
      return chunk, path
    end
    tried[#tried + 1] = "\n\tno file '" .. path .. "'"
  end
  return table.concat(tried)
end

local installed = false
local function install_searcher()
  if installed then return end
  installed = true
  table.insert(package.searchers, 2, searcher)
end

-- Manifest fields: name → { type, required }.
local FIELDS = {
  name = { "string", true }, title = { "string", true }, feature = { "string", false },
  group = { "string", true }, instructions = { "string", false }, description = { "string", false },
  connection = { "string", false }, tools = { "string", false }, cli = { "string", false },
  sim = { "string", false }, receipts = { "string", false }, reconcile = { "string", false },
  config = { "table", false }, policy_settings = { "table", false }, console = { "table", false },
  metrics = { "string", false }, migrations = { "table", false },
}

-- Check a manifest; returns it or nil, "field: rule".
function M.check(m, folder)
  if type(m) ~= "table" then return nil, "init.lua must return the manifest table" end
  for k in pairs(m) do
    if not FIELDS[k] then return nil, ("unknown field '%s'"):format(tostring(k)) end
  end
  local keys = {}
  for k in pairs(FIELDS) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    -- the required ones first, in the order a manifest lists them
    local ra, rb = FIELDS[a][2] and (a == "name" and 0 or 1) or 2, FIELDS[b][2] and (b == "name" and 0 or 1) or 2
    if ra ~= rb then return ra < rb end
    return a < b
  end)
  for _, k in ipairs(keys) do
    local f, v = FIELDS[k], m[k]
    if v == nil and f[2] then return nil, ("%s: required (a %s)"):format(k, f[1]) end
    if v ~= nil and type(v) ~= f[1] then return nil, ("%s: must be a %s"):format(k, f[1]) end
  end
  if not m.name:match("^[%l][%l%d_]*$") or #m.name > 32 then
    return nil, "name: must be 1-32 lowercase letters, digits or '_', starting with a letter"
  end
  if folder and m.name ~= folder then
    return nil, ("name: '%s' must be the package's folder name '%s'"):format(m.name, folder)
  end
  if m.feature and not m.feature:match("^[%w_.%-]+$") then
    return nil, "feature: must be a feature code of letters, digits, '_', '.' or '-'"
  end
  return m
end

local function load_one(name, dir)
  dirs_of[name] = dir
  local path = dir .. "/init.lua"
  local chunk, err = loadfile(path, "t")
  if not chunk then return nil, err end
  local ok, m = pcall(chunk)
  if not ok then return nil, ("%s: %s"):format(path, tostring(m)) end
  local cerr
  m, cerr = M.check(m, name)
  if not m then return nil, ("%s: %s"):format(path, cerr) end
  local pkg = { name = name, dir = dir, manifest = m, title = m.title, group = m.group,
                feature = m.feature, instructions = m.instructions }
  local tools = dir .. "/" .. (m.tools or "tools")
  if lfs.attributes(tools, "mode") == "directory" then pkg.tools_dir = tools end
  return pkg
end

-- Discover the packages in dirs (in order; a name found twice is an
-- error). Replaces what was loaded before. Returns the list or nil, err.
function M.load(dirs)
  install_searcher()
  local found, names, where = {}, {}, {}
  for _, d in ipairs(dirs) do
    local mode = lfs.attributes(d, "mode")
    if mode ~= "directory" then return nil, ("integration directory %s does not exist"):format(d) end
    local entries = {}
    for e in lfs.dir(d) do
      if e:sub(1, 1) ~= "." and lfs.attributes(d .. "/" .. e .. "/init.lua", "mode") == "file" then
        entries[#entries + 1] = e
      end
    end
    table.sort(entries)
    for _, e in ipairs(entries) do
      if where[e] then
        return nil, ("integration '%s' is in both %s and %s"):format(e, where[e], d)
      end
      where[e] = d
      local pkg, err = load_one(e, d .. "/" .. e)
      if not pkg then return nil, err end
      found[e] = pkg
      names[#names + 1] = e
    end
  end
  table.sort(names)
  packages, order = found, names
  return M.list()
end

-- The packages, sorted by name.
function M.list()
  local out = {}
  for i, n in ipairs(order) do out[i] = packages[n] end
  return out
end

function M.get(name)
  return packages[name]
end

-- A package's module (integrations.<name>.<mod>), or nil, err.
function M.module(pkg, mod)
  if type(pkg) == "string" then pkg = packages[pkg] end
  if not pkg then return nil, "no such integration" end
  local ok, m = pcall(require, "integrations." .. pkg.name .. "." .. mod)
  if not ok then return nil, tostring(m) end
  return m
end

-- The connection model of the integration named `name` (what a tool's
-- `connection` field names), or nil, err.
function M.connection(name)
  local pkg = packages[name]
  if not pkg then return nil, ("no integration '%s' is installed"):format(tostring(name)) end
  if pkg.connection_model == nil then
    local m, err = M.module(pkg, pkg.manifest.connection or "connection")
    if not m then return nil, err end
    pkg.connection_model = m
  end
  return pkg.connection_model
end

-- Call fn(pkg, module) for each package that has module `field` (a
-- manifest field naming a module, or a module name).
function M.each(field, fn)
  for _, pkg in ipairs(M.list()) do
    local mod = pkg.manifest[field] or (FIELDS[field] == nil and field) or nil
    if mod then
      local m = M.module(pkg, mod)
      if m then fn(pkg, m) end
    end
  end
end

-- The policy settings in force: each package's defaults (its manifest's
-- policy_settings, keyed by policy file name) under the operator's own
-- (configured wins, key by key). Returns a new map.
function M.policy_settings(configured)
  local out = {}
  for name, t in pairs(configured or {}) do
    out[name] = {}
    for k, v in pairs(t) do out[name][k] = v end
  end
  for _, pkg in ipairs(M.list()) do
    for policy_name, defaults in pairs(pkg.manifest.policy_settings or {}) do
      local t = out[policy_name]
      if not t then t = {}; out[policy_name] = t end
      for k, v in pairs(defaults) do
        if t[k] == nil then t[k] = v end
      end
    end
  end
  return out
end

return M
