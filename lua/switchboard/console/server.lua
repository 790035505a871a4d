-- The operator console: server-rendered pages on their own listener
-- (console.listen), for operators and for a tenant's administrators.
--
-- Identity: a one-time login link (`switchboard admin console-link
-- [--tenant T]`, admin method console.link) opens a session; its cookie
-- is HttpOnly, SameSite=Strict (Secure on TLS), its token random
-- (vault.token) and kept here only as a hash. Agent tokens never log in:
-- this listener does not read Authorization at all. Every form carries
-- the session's CSRF token; every answer has a strict CSP.
--
-- Every page calls the admin methods through admin:handle, as the CLI
-- does, with the login as the actor; a tenant administrator's calls are
-- always for their own tenant (the tenant parameter is overwritten), and
-- only the methods of TENANT_METHODS are theirs.
local loop = require("core.loop")
local httpd = require("core.httpd")
local vault = require("core.vault")
local log = require("switchboard.log")
local directory = require("switchboard.directory")
local http_server = require("switchboard.http_server")
local template = require("switchboard.console.template")
local pages = require("switchboard.console.pages")

local M = {}
local Console = {}
Console.__index = Console

M.COOKIE = "sb_console"
M.CSP = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self';"
  .. " frame-ancestors 'none'; base-uri 'none'"
M.TEMPLATES = { "layout", "login", "message", "tenants", "tenant", "connection", "escalations", "escalation",
                "executions", "execution", "agents", "audit", "usage" }
M.STATIC = { ["style.css"] = "text/css; charset=utf-8", ["console.js"] = "text/javascript; charset=utf-8" }

-- The admin methods a tenant administrator may call (for their tenant);
-- the integrations' own methods are added from their descriptors.
M.TENANT_METHODS = {
  ["integrations.list"] = true, ["agent.list"] = true, ["agent.add"] = true, ["agent.revoke"] = true,
  ["agent.groups"] = true, ["escalations.list"] = true, ["escalation.show"] = true,
  ["escalation.approve"] = true, ["escalation.reject"] = true, ["executions.list"] = true,
  ["execution.show"] = true, ["audit.settings"] = true, ["sends.daily"] = true,
}

local LOOPBACK = { localhost = true, ["127.0.0.1"] = true, ["::1"] = true, ["[::1]"] = true }

local function hash(token) return vault.hex(vault.sha256("switchboard console\0" .. token)) end

local function same(a, b)
  return type(a) == "string" and type(b) == "string" and vault.equal(vault.sha256(a), vault.sha256(b))
end

-- application/x-www-form-urlencoded (a body or a query) -> { key = value }
-- (a repeated key keeps its values as a list).
function M.form(s)
  return (require("switchboard.form").parse(s))
end

local function read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end

-- {{{ links and sessions

-- A one-time login link: { url, expires_at, scope, tenant }.
function Console:new_link(tenant, actor)
  self:sweep()
  local token = vault.token("sbl_")
  local seconds = self.cfg.link_seconds
  self.links[hash(token)] = { tenant = tenant, by = actor, expires = loop.now() + seconds }
  return { url = self.base .. "/login?token=" .. token, scope = tenant and "tenant" or "operator",
           tenant = tenant, expires_at = require("switchboard.time").iso(os.time() + seconds),
           seconds = seconds }
end

function Console:sweep()
  local now = loop.now()
  for k, l in pairs(self.links) do if l.expires <= now then self.links[k] = nil end end
  for k, s in pairs(self.sessions) do if s.expires <= now then self.sessions[k] = nil end end
end

-- The session of the request's cookie, or nil.
function Console:session(req)
  local cookie = req.headers.cookie or ""
  local token
  for k, v in cookie:gmatch("([^=;%s]+)=([^;]*)") do
    if k == M.COOKIE then token = v end
  end
  if not token or token == "" then return nil end
  local s = self.sessions[hash(token)]
  if not s then return nil end
  if s.expires <= loop.now() then
    self.sessions[hash(token)] = nil
    return nil
  end
  return s
end

-- Exchange a link's token for a session; returns the session's cookie
-- token and the session, or nil, err.
function Console:login(token)
  if type(token) ~= "string" or token == "" then return nil, "give the login link's token" end
  if token:sub(1, 4) == "sbt_" then
    return nil, "that is an agent token: agents cannot log in to the console. An operator prints a login link"
      .. " with `switchboard admin console-link`"
  end
  local k = hash(token)
  local l = self.links[k]
  if not l or l.expires <= loop.now() then
    self.links[k] = nil
    return nil, "this login link is unknown, already used or expired: print a new one with"
      .. " `switchboard admin console-link`"
  end
  self.links[k] = nil
  local sid = vault.token("sbs_")
  local s = { tenant = l.tenant, csrf = vault.hex(vault.random(24)), expires = loop.now() + self.cfg.session_seconds,
              actor = l.tenant and ("console: admin of tenant %s (link by %s)"):format(l.tenant, tostring(l.by))
                or ("console: operator (link by %s)"):format(tostring(l.by)) }
  s.key = hash(sid)
  self.sessions[s.key] = s
  return sid, s
end

function Console:logout(s)
  if s and s.key then self.sessions[s.key] = nil end
end

-- }}}

-- An admin method for the session: the answer's result, or nil, message.
function Console:call(s, method, params)
  params = params or {}
  if s.tenant then
    if not (M.TENANT_METHODS[method] or self.tenant_methods[method]) then
      return nil, "this login is for one tenant: an operator does that"
    end
    params.tenant = s.tenant
  end
  local res = self.server.admin:handle({ jsonrpc = "2.0", id = 1, method = method, params = params },
    { actor = s.actor })
  if res.error then return nil, res.error.message end
  return res.result
end

function Console:host_ok(req)
  local h = req.headers.host
  if type(h) ~= "string" then return false end
  h = h:lower()
  h = h:match("^(%[[%x:%.]+%])") or h:match("^([^:]+)")
  return h ~= nil and (LOOPBACK[h] or self.allowed_hosts[h] == true)
end

-- A POST from another origin is refused (the Origin, when the browser
-- sends it, must be this console's).
function Console:origin_ok(req)
  local o = req.headers.origin
  if o == nil then return true end
  local host = (req.headers.host or ""):lower()
  return o:lower() == "http://" .. host or o:lower() == "https://" .. host
end

function Console:cookie(value, max_age)
  local c = ("%s=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=%d"):format(M.COOKIE, value, max_age)
  if self.secure then c = c .. "; Secure" end
  return c
end

local function with_headers(status, headers, body)
  headers = headers or {}
  headers["Content-Security-Policy"] = M.CSP
  headers["X-Content-Type-Options"] = "nosniff"
  headers["X-Frame-Options"] = "DENY"
  headers["Referrer-Policy"] = "same-origin"
  headers["Cache-Control"] = headers["Cache-Control"] or "no-store"
  headers["Content-Type"] = headers["Content-Type"] or "text/html; charset=utf-8"
  return status, headers, body
end

-- A full page: the layout around templates[name] rendered with values.
function Console:render(s, name, values, status, headers)
  values = values or {}
  values.csrf = s and s.csrf or nil
  values.operator = s and not s.tenant or nil
  values.login = s and (s.tenant and ("admin of " .. s.tenant) or "operator") or nil
  -- the message of the action that redirected here (not taken by an
  -- error page such as a browser's request for /favicon.ico)
  if s and s.flash and (status or 200) == 200 then
    values.flash = s.flash
    s.flash = nil
  end
  local content = self.templates[name]:render(values)
  local page = self.templates.layout:render({ title = values.title or "Switchboard", content = content,
    login = values.login, csrf = values.csrf, operator = values.operator, tenant = values.tenant,
    nav = values.tenant and true or nil, base = values.base, flash = values.flash })
  return with_headers(status or 200, headers, page)
end

function Console:message(s, status, title, text)
  return self:render(s, "message", { title = title, text = text }, status)
end

function Console:redirect(to, headers)
  headers = headers or {}
  headers.Location = to
  return with_headers(303, headers, "")
end

function Console:handle(req)
  if not self:host_ok(req) then
    log.warn("console: refused a request for host %s from %s", tostring(req.headers.host), req.remote)
    return with_headers(403, { ["Content-Type"] = "text/plain; charset=utf-8" }, "forbidden: unknown Host\n")
  end
  local ok, status, headers, body = xpcall(self.route, debug.traceback, self, req)
  if not ok then
    log.error("console: %s %s failed: %s", req.method, req.path, tostring(status))
    return self:message(nil, 500, "Internal error", "The request failed; the server log has the details.")
  end
  return status, headers, body
end

function Console:route(req)
  local path, method = req.path, req.method
  local name = path:match("^/static/([%w%.%-]+)$")
  if name and self.static[name] then
    return with_headers(200, { ["Content-Type"] = M.STATIC[name], ["Cache-Control"] = "max-age=300" },
      self.static[name])
  end
  if path == "/favicon.ico" then
    return with_headers(404, { ["Content-Type"] = "text/plain", ["Cache-Control"] = "max-age=3600" }, "")
  end
  if method ~= "GET" and method ~= "HEAD" and method ~= "POST" then
    return with_headers(405, { Allow = "GET, POST", ["Content-Type"] = "text/plain" }, "method not allowed\n")
  end
  local query = M.form(req.query)
  local form = {}
  if method == "POST" then
    if not self:origin_ok(req) then
      return self:message(nil, 403, "Refused", "This form was sent from another site.")
    end
    local ctype = (req.headers["content-type"] or ""):lower()
    if not ctype:find("application/x-www-form-urlencoded", 1, true) then
      return self:message(nil, 415, "Refused", "Forms are sent as application/x-www-form-urlencoded.")
    end
    form = M.form(req.body)
  end
  if path == "/login" then
    if method == "GET" then
      return self:render(nil, "login", { title = "Log in", token = type(query.token) == "string" and query.token or nil })
    end
    local sid, s = self:login(form.token)
    if not sid then
      log.warn("console: a login from %s was refused: %s", req.remote, s)
      return self:render(nil, "login", { title = "Log in", error = s }, 403)
    end
    local t = s.tenant and directory.tenant(self.server.db, s.tenant)
    directory.settings_audit(self.server.db, t and t.id or nil, s.actor, "console.login", nil,
      { scope = s.tenant and "tenant" or "operator", remote = req.remote })
    self.server.audit:flush()
    log.info("console: %s logged in from %s", s.actor, req.remote)
    return self:redirect("/", { ["Set-Cookie"] = self:cookie(sid, self.cfg.session_seconds) })
  end
  local s = self:session(req)
  if not s then
    if method == "POST" then
      return self:render(nil, "login", { title = "Log in",
        error = "Your session has ended or expired; nothing was changed. Log in again with a new link." }, 401)
    end
    return self:render(nil, "login", { title = "Log in", stale = req.headers.cookie ~= nil or nil }, 401)
  end
  if method == "POST" and not same(form._csrf, s.csrf) then
    log.warn("console: a form without its CSRF token from %s (%s %s) was refused", req.remote, method, path)
    return self:message(s, 403, "Refused", "This form is missing its security token (CSRF); nothing was changed."
      .. " Reload the page and try again.")
  end
  if path == "/logout" and method == "POST" then
    self:logout(s)
    return self:redirect("/login", { ["Set-Cookie"] = self:cookie("", 0) })
  end
  return pages.route(self, s, req, method, path, query, form)
end

-- Start the console's listener; returns the console or nil, err.
function M.start(server)
  local cfg = server.cfg.console
  local host, port = http_server.parse_listen(cfg.listen)
  if not host then return nil, (port:gsub("^http%.listen", "console.listen")) end
  local loopback = http_server.is_loopback(host)
  local tls_cert, tls_key
  if cfg.tls_cert or cfg.tls_key then
    if not (cfg.tls_cert and cfg.tls_key) then return nil, "console.tls_cert and console.tls_key go together" end
    local err
    tls_cert, err = read(cfg.tls_cert)
    if not tls_cert then return nil, "console.tls_cert: " .. err end
    tls_key, err = read(cfg.tls_key)
    if not tls_key then return nil, "console.tls_key: " .. err end
  elseif not loopback and not cfg.behind_tls_proxy then
    return nil, ("console.listen %s is not a loopback address: set console.tls_cert and console.tls_key, or"
      .. " console.behind_tls_proxy = true when a TLS proxy is in front"):format(cfg.listen)
  end
  local templates, terr = template.load_dir(cfg.dir .. "/templates", M.TEMPLATES)
  if not templates then return nil, terr end
  local static = {}
  for n in pairs(M.STATIC) do
    local text, err = read(cfg.dir .. "/static/" .. n)
    if not text then return nil, "console static file: " .. err end
    static[n] = text
  end
  local self = setmetatable({ server = server, cfg = cfg, templates = templates, static = static, links = {},
                              sessions = {}, allowed_hosts = {}, tenant_methods = {} }, Console)
  for _, h in ipairs(cfg.allowed_hosts) do self.allowed_hosts[h:lower()] = true end
  if not loopback and host ~= "0.0.0.0" and host ~= "::" then
    self.allowed_hosts[host:find(":", 1, true) and "[" .. host .. "]" or host] = true
  end
  local r = server.admin.methods["integrations.list"](server.admin, {})
  self.integrations = type(r.integrations) == "table" and r.integrations or {}
  for _, d in ipairs(self.integrations) do
    for _, m in pairs(d.methods or {}) do self.tenant_methods[m] = true end
    for _, t in ipairs(d.tabs or {}) do self.tenant_methods[t.method] = true end
    if d.usage then self.tenant_methods[d.usage] = true end
  end
  local srv, err = httpd.listen{ host = host, port = port, max_body = 65536, tls_cert = tls_cert, tls_key = tls_key,
    handler = function(req) return self:handle(req) end }
  if not srv then return nil, ("console.listen %s: %s"):format(cfg.listen, err) end
  self.httpd = srv
  self.port = srv:port()
  local scheme = tls_cert and "https" or "http"
  self.base = cfg.url and cfg.url:gsub("/$", "")
    or ("%s://%s:%d"):format(scheme, host:find(":", 1, true) and "[" .. host .. "]" or host, self.port)
  self.secure = tls_cert ~= nil or cfg.behind_tls_proxy or self.base:sub(1, 8) == "https://"
  if cfg.url then
    local u = require("core.http").parse(cfg.url)
    if u and u.host then self.allowed_hosts[u.host:lower()] = true end
  end
  self.sweeper = loop.timer(60, 60, function() self:sweep() end)
  log.info("console: on %s (log in with `switchboard admin console-link`)", self.base)
  return self
end

function Console:close()
  if self.sweeper then self.sweeper:close() self.sweeper = nil end
  if self.httpd then self.httpd:close() self.httpd = nil end
  self.sessions, self.links = {}, {}
end

return M
