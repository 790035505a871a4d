-- The policy engine. Policy files run in a sandbox: an allow-listed,
-- read-only environment (no io, os, require, load, debug, metatables),
-- an instruction budget enforced by a count hook, and a load phase that
-- may only build the policy table. Decisions: allow, flag, hold,
-- escalate, deny. A set that fails to load never replaces the one in force.
local lfs = require("lfs")
local mem = require("core.mem")
local pstring = require("switchboard.policy_string")

local M = {}
M.__index = M

local DECISIONS = { allow = 1, flag = 2, hold = 3, escalate = 4, deny = 5 }
M.DECISIONS = DECISIONS

-- A read-only view of t (recursively, for nested tables).
local function readonly(t, name)
  local cache = {}
  return setmetatable({}, {
    __index = function(_, k)
      local v = t[k]
      if type(v) == "table" then
        local p = cache[k]
        if not p then
          p = readonly(v, name .. "." .. tostring(k))
          cache[k] = p
        end
        return p
      end
      return v
    end,
    __newindex = function(_, k)
      error(("%s is read-only (tried to set '%s')"):format(name, tostring(k)), 2)
    end,
    __len = function() return #t end,
    __pairs = function()
      return function(_, k)
        local nk, nv = next(t, k)
        if type(nv) == "table" then return nk, readonly(nv, name .. "." .. tostring(nk)) end
        return nk, nv
      end, nil, nil
    end,
    __metatable = false,
  })
end
M.readonly = readonly

local function copy_lib(lib, names)
  local out = {}
  for _, n in ipairs(names) do out[n] = lib[n] end
  return out
end

local function decision(kind)
  return function(reason)
    if kind ~= "allow" and (type(reason) ~= "string" or reason == "") then
      error(kind .. "() needs a reason the agent and the operator can read", 2)
    end
    return { decision = kind, reason = reason }
  end
end

-- The environment a policy file sees. Nothing in it reaches the host.
local function sandbox_env(settings)
  local base = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    select = select, tonumber = tonumber, tostring = tostring, type = type,
    string = pstring.lib,
    table = copy_lib(table, { "concat", "insert", "remove", "sort", "unpack" }),
    math = copy_lib(math, { "abs", "ceil", "floor", "fmod", "huge", "max", "maxinteger",
                            "min", "mininteger", "modf", "tointeger", "type", "ult" }),
    utf8 = copy_lib(utf8, { "char", "charpattern", "codepoint", "codes", "len", "offset" }),
    allow = decision("allow"), flag = decision("flag"), hold = decision("hold"),
    escalate = decision("escalate"), deny = decision("deny"),
    settings = settings or {},
    detect = copy_lib(require("switchboard.detect"), { "normalize", "scan", "categories", "luhn",
                                                      "iban_valid", "ssn_valid" }),
    phone = require("switchboard.phone").parse, -- libphonenumber: { valid, region, type, e164, ... } or nil, err
  }
  local denied = { io = true, os = true, require = true, load = true, loadfile = true,
                   dofile = true, debug = true, package = true, getmetatable = true,
                   setmetatable = true, rawset = true, rawget = true, rawequal = true,
                   collectgarbage = true, coroutine = true, pcall = true, xpcall = true }
  local env = readonly(base, "policy environment")
  return setmetatable({}, {
    __index = function(_, k)
      local v = env[k]
      if v == nil and denied[k] then
        error(("'%s' is not available to policies"):format(tostring(k)), 2)
      end
      return v
    end,
    __newindex = function(_, k)
      error(("policies must not set globals (tried '%s')"):format(tostring(k)), 2)
    end,
    __metatable = false,
  })
end

-- Run fn(arg) under an instruction budget (a count hook on the running
-- coroutine), a matching budget (policy_string: the string matching
-- functions may spend MATCH_STEPS matching steps per instruction of the
-- budget, in all) and a memory ceiling (core.mem: at most `memory` more
-- bytes while it runs). While it runs, methods on strings (s:find(…)) are
-- the bounded ones too. Returns pcall's results.
local MATCH_STEPS = 10
local memory_ceiling = 8 * 1048576
local string_mt = getmetatable("")
local function budgeted(budget, what, fn, arg)
  local co = coroutine.running()
  debug.sethook(co, function()
    debug.sethook(co)
    error(("%s exceeded its budget of %d instructions"):format(what, budget), 2)
  end, "", budget)
  pstring.reset(budget * MATCH_STEPS)
  local methods = string_mt.__index
  string_mt.__index = pstring.lib
  mem.limit(memory_ceiling)
  local ok, res = pcall(fn, arg)
  mem.limit()
  string_mt.__index = methods
  debug.sethook(co)
  if not ok and res == "not enough memory" then
    res = ("%s exceeded its memory ceiling of %d bytes"):format(what, memory_ceiling)
  end
  return ok, res
end

-- The memory a policy may allocate while it runs (limits.policy_memory).
function M.set_memory_ceiling(bytes)
  memory_ceiling = bytes
end

-- What a call is, for `kinds`: a policy applies to the calls that are all
-- of its kinds (the call view's fields of the same names are true): sends
-- (its tool declares what it sends), writes, connected (its tool needs an
-- integration's connection), reads_untrusted (its result carries
-- third-party text).
M.KINDS = { sends = true, writes = true, connected = true, reads_untrusted = true }

local function check_policy(p, file)
  if type(p) ~= "table" then return nil, ("%s: must return a table"):format(file) end
  local known = { name = true, priority = true, tools = true, writes_only = true, kinds = true,
                  check = true, description = true }
  for k in pairs(p) do
    if not known[k] then return nil, ("%s: unknown field '%s'"):format(file, tostring(k)) end
  end
  if type(p.name) ~= "string" or not p.name:match("^[%w_%.%-]+$") then
    return nil, ("%s: name: must be letters, digits, '_', '.' or '-'"):format(file)
  end
  if math.type(p.priority) ~= "integer" then
    return nil, ("%s: priority: must be an integer (lower runs first)"):format(file)
  end
  if p.tools ~= nil then
    if type(p.tools) ~= "table" then return nil, ("%s: tools: must be a list of tool names"):format(file) end
    for i, t in ipairs(p.tools) do
      if type(t) ~= "string" then return nil, ("%s: tools[%d]: must be a tool name"):format(file, i) end
    end
  end
  if p.writes_only ~= nil and type(p.writes_only) ~= "boolean" then
    return nil, ("%s: writes_only: must be a boolean"):format(file)
  end
  if p.kinds ~= nil then
    if type(p.kinds) ~= "table" then return nil, ("%s: kinds: must be a list of call kinds"):format(file) end
    for i, k in ipairs(p.kinds) do
      if not M.KINDS[k] then
        return nil, ("%s: kinds[%d]: must be one of sends, writes, connected, reads_untrusted"):format(file, i)
      end
    end
  end
  if type(p.check) ~= "function" then
    return nil, ("%s: check: must be a function(call) returning a decision"):format(file)
  end
  return true
end

-- Load one policy file from source text; settings are its entry in the
-- config's policy_settings (keyed by file name without ".lua").
-- Returns the policy or nil, err.
function M.load_source(src, file, settings, budget)
  local env = sandbox_env(settings)
  local chunk, err = load(src, "@" .. file, "t", env)
  if not chunk then return nil, err end
  local ok, p = budgeted(budget, "policy " .. file .. " (load)", chunk)
  if not ok then return nil, tostring(p) end
  local valid, verr = check_policy(p, file)
  if not valid then return nil, verr end
  local tools
  if p.tools then
    tools = {}
    for _, t in ipairs(p.tools) do tools[t] = true end
  end
  return { name = p.name, priority = p.priority, tools = tools, writes_only = p.writes_only,
           kinds = p.kinds and { table.unpack(p.kinds) }, check = p.check, file = file, description = p.description }
end

-- Load every *.lua in dir. Returns a policy set or nil, err.
function M.load(dir, settings_by_name, budget)
  local self = setmetatable({ list = {}, dir = dir, budget = budget or 1000000 }, M)
  if not lfs.attributes(dir) then return nil, ("policy directory %s does not exist"):format(dir) end
  local names = {}
  for name in lfs.dir(dir) do
    if name:match("%.lua$") then names[#names + 1] = name end
  end
  table.sort(names)
  local seen = {}
  for _, name in ipairs(names) do
    local path = dir .. "/" .. name
    local f, ferr = io.open(path, "rb")
    if not f then return nil, ferr end
    local src = f:read("a")
    f:close()
    local settings = (settings_by_name or {})[name:gsub("%.lua$", "")]
    local p, err = M.load_source(src, path, settings, self.budget)
    if not p then return nil, err end
    if seen[p.name] then
      return nil, ("%s: name: '%s' is already used by %s"):format(path, p.name, seen[p.name])
    end
    seen[p.name] = path
    self.list[#self.list + 1] = p
  end
  table.sort(self.list, function(a, b)
    if a.priority ~= b.priority then return a.priority < b.priority end
    return a.name < b.name
  end)
  return self
end

local function applies(p, call)
  if p.tools and not p.tools[call.tool] then return false end
  if p.writes_only and not call.writes then return false end
  for _, k in ipairs(p.kinds or {}) do
    if not call[k] then return false end
  end
  return true
end

-- Evaluate the chain for a call view (a plain table; policies get it
-- read-only). Returns { decision, reason, policy, flags = {…}, ran = {…},
-- passed = {…} }. The first deny, escalate or hold ends the chain; flags
-- accumulate. For a call a person approved (call.approved), holds and
-- escalations are noted in `passed` and the chain goes on, so every later
-- policy still runs and a deny still refuses. A policy that fails or
-- returns garbage denies (fail closed).
function M:evaluate(call)
  local view
  local flags, ran, passed = {}, {}, {}
  for _, p in ipairs(self.list) do
    if applies(p, call) then
      view = view or readonly(call, "call")
      ran[#ran + 1] = p.name
      local ok, d = budgeted(self.budget, "policy " .. p.name, p.check, view)
      if not ok then
        return { decision = "deny", policy = p.name, flags = flags, ran = ran, failed = true,
                 reason = "a safety policy failed, so the call was refused", error = tostring(d) }
      end
      if d == nil then d = { decision = "allow" } end
      if type(d) ~= "table" or not DECISIONS[d.decision] then
        return { decision = "deny", policy = p.name, flags = flags, ran = ran, failed = true,
                 reason = "a safety policy failed, so the call was refused",
                 error = "check() must return allow(), flag(r), hold(r), escalate(r) or deny(r)" }
      end
      if d.decision == "flag" then
        flags[#flags + 1] = { policy = p.name, reason = d.reason }
      elseif call.approved and (d.decision == "hold" or d.decision == "escalate") then
        passed[#passed + 1] = { policy = p.name, reason = d.reason }
      elseif d.decision ~= "allow" then
        return { decision = d.decision, reason = d.reason, policy = p.name, flags = flags, ran = ran,
                 passed = passed }
      end
    end
  end
  return { decision = #flags > 0 and "flag" or "allow", flags = flags, ran = ran, passed = passed }
end

function M:names()
  local out = {}
  for i, p in ipairs(self.list) do out[i] = p.name end
  return out
end

return M
