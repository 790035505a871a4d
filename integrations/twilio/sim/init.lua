-- The Twilio simulator: a stateful stand-in for api.twilio.com,
-- lookups.twilio.com, verify.twilio.com and content.twilio.com on one
-- core.httpd port (their paths do not collide), plus a control API under
-- /__sim/. See docs/simulator.md.
--
--   local sim = require("integrations.twilio.sim")
--   local s = assert(sim.start{ port = 0, fixture = "tests/fixtures/sim.lua" })
--   s.port, s.url, s.state, s:reset(), s:close()
local httpd = require("core.httpd")
local json = require("switchboard.json")
local loop = require("core.loop")
local U = require("integrations.twilio.sim.util")
local S = require("integrations.twilio.sim.state")
local api = require("integrations.twilio.sim.api")
local lookups = require("integrations.twilio.sim.lookups")
local verify = require("integrations.twilio.sim.verify")
local content = require("integrations.twilio.sim.content")
local control = require("integrations.twilio.sim.control")

local M = {}

local Sim = {}
Sim.__index = Sim

local LOG_MAX = 10000

-- The account and key kind for the request's Basic credentials, or nil.
local function authenticate(st, user, pass)
  if not user or not pass then return nil end
  local acct, kind
  if user:match("^SK") then
    local key = st.keys[user]
    if not key or key.revoked or key.secret ~= pass then return nil end
    acct, kind = st.accounts[key.account], key.kind
  elseif user:match("^AC") then
    acct = st.accounts[user]
    if not acct or acct.auth_token ~= pass then return nil end
    kind = "auth_token"
  end
  if not acct or acct.status ~= "active" then return nil end
  return { account = acct, kind = kind, user = user }
end

-- Route one Twilio request (after the log and faults).
local function route(self, req, params, form, user, pass)
  local who = authenticate(self.state, user, pass)
  if not who then return U.auth_failed() end
  local path = req.path
  if path:sub(1, 12) == "/2010-04-01/" then
    return api.route(self, req, params, form, who)
  elseif path:sub(1, 17) == "/v2/PhoneNumbers/" then
    return lookups.route(self, req, params, form, who)
  elseif path:sub(1, 13) == "/v2/Services/" then
    return verify.route(self, req, params, form, who)
  elseif path == "/v1/Content" or path:sub(1, 12) == "/v1/Content/" then
    return content.route(self, req, params, form, who)
  end
  return U.not_found(path)
end

local FAULT_CODES = {
  ["429"] = { 20429, "Too Many Requests" },
  ["500"] = { 20500, "Internal Server Error" },
  ["502"] = { 20502, "Bad Gateway" },
  ["503"] = { 20503, "Service Unavailable" },
}

-- Take the first queued fault matching req (consumed in order).
local function take_fault(self, req)
  for i, f in ipairs(self.faults) do
    if (not f.method or f.method == req.method)
        and (not f.path_pattern or req.path:find(f.path_pattern)) then
      f.count = f.count - 1
      if f.count <= 0 then table.remove(self.faults, i) end
      return f
    end
  end
end

function Sim:handle(req)
  if req.path == "/__sim" or req.path:sub(1, 7) == "/__sim/" then
    return control.handle(self, req)
  end
  local st = self.state
  local params = U.parse_form(req.query)
  local form = {}
  local ctype = (req.headers["content-type"] or ""):lower()
  if req.body ~= "" and (ctype == "" or ctype:find("application/x-www-form-urlencoded", 1, true)) then
    form = U.parse_form(req.body)
  end
  local user, pass = U.basic_auth(req.headers.authorization)
  self.log_n = self.log_n + 1
  local entry = {
    n = self.log_n, method = req.method, path = req.path, query = req.query, params = params, form = form,
    auth = user, time = U.iso(S.now(st)), t = loop.now(), host = req.headers.host,
  }
  self.log[#self.log + 1] = entry
  if #self.log > LOG_MAX then table.remove(self.log, 1) end

  local f = take_fault(self, req)
  if f then
    entry.fault = f.action
    if f.action == "delay" then
      loop.sleep((f.delay_ms or 1000) / 1000)
    elseif f.action == "next_page" then
      -- answer as usual, with the list's next-page link replaced
      local status, headers, body = route(self, req, params, form, user, pass)
      entry.status = status
      local v = json.decode(body or "")
      if type(v) == "table" then
        if type(v.meta) == "table" then v.meta.next_page_url = f.next_page_uri else v.next_page_uri = f.next_page_uri end
        body = json.encode(v)
      end
      return status, headers, body
    else
      if f.process then
        entry.status = (route(self, req, params, form, user, pass))
      end
      if f.action == "drop" then
        entry.status = entry.status or 0
        return nil
      elseif f.action == "timeout" then
        loop.sleep((f.delay_ms or 120000) / 1000)
        return nil
      end
      local status = tonumber(f.action)
      local dflt = FAULT_CODES[f.action] or { nil, "Simulated failure" }
      local extra = {}
      local ra = tonumber(f.retry_after)
      if ra then
        extra["Retry-After"] = ra == math.floor(ra) and ("%d"):format(ra) or tostring(ra)
      elseif f.retry_after then
        extra["Retry-After"] = tostring(f.retry_after)
      end
      entry.status = status
      local code = f.code or dflt[1] or status
      local s, h, b = U.error(status, code, f.message or dflt[2], extra)
      return s, h, b
    end
  end
  local status, headers, body = route(self, req, params, form, user, pass)
  entry.status = status
  return status, headers, body
end

-- Rebuild the state from the fixture; clears the log and the faults.
function Sim:reset()
  local ok, st = pcall(S.new, self.fixture, os.time())
  if not ok then return nil, tostring(st) end
  self.state = st
  self.log, self.log_n, self.faults = {}, 0, {}
  return true
end

function Sim:close()
  if self.server then
    self.server:close()
    self.server = nil
  end
end

-- Start a simulator. opts: host ("127.0.0.1"), port (0 = any), fixture (a
-- path or a table; default tests/fixtures/sim.lua under the project root).
-- Returns the Sim or nil, err.
function M.start(opts)
  opts = opts or {}
  local src = opts.fixture or M.default_fixture()
  local fx, err = S.load_fixture(src)
  if not fx then return nil, err end
  local self = setmetatable({ fixture = fx, log = {}, log_n = 0, faults = {} }, Sim)
  local ok, rerr = self:reset()
  if not ok then return nil, rerr end
  local server, lerr = httpd.listen{
    host = opts.host or "127.0.0.1",
    port = opts.port or 0,
    max_body = opts.max_body or 1048576,
    handler = function(req) return self:handle(req) end,
  }
  if not server then return nil, lerr end
  self.server = server
  self.port = server:port()
  local host = opts.host or "127.0.0.1"
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  self.url = ("http://%s:%d"):format(host, self.port)
  return self
end

-- tests/fixtures/sim.lua under the project root.
function M.default_fixture(root)
  root = root or package.path:match("([^;]+)/lua/%?%.lua")
  return (root or ".") .. "/tests/fixtures/sim.lua"
end

return M
