-- MCP over Streamable HTTP (protocols 2025-03-26 … 2025-11-25 and the
-- stateless 2026-07-28) on core.httpd, plus /healthz and /metrics.
--
-- Every message goes through the same mcp.Session as on the agent socket
-- (pipeline, policies and audit unchanged); this module is only its
-- transport: an answer goes to the HTTP request waiting for it (as JSON, or
-- as server-sent events when progress or a subscription may come first),
-- other notifications to the session's GET stream. The agent is the
-- request's `Authorization: Bearer sbt_…`, checked on every request; a
-- session belongs to the agent that opened it.
local loop = require("core.loop")
local http = require("core.http")
local httpd = require("core.httpd")
local vault = require("core.vault")
local json = require("switchboard.json")
local log = require("switchboard.log")
local mcp = require("switchboard.mcp")
local directory = require("switchboard.directory")
local metrics = require("switchboard.metrics")

local M = {}
local Http = {}
Http.__index = Http

local SSE = "text/event-stream"
-- 2026-07-28: a routing header that disagrees with the body (HTTP 400)
M.HEADER_MISMATCH = -32020
local LOOPBACK_NAMES = { localhost = true, ["127.0.0.1"] = true, ["::1"] = true, ["[::1]"] = true }

-- "host:port" or "[v6]:port" → host, port (or nil, err).
function M.parse_listen(s)
  local host, port = s:match("^%[([%x:%.]+)%]:(%d+)$")
  if not host then host, port = s:match("^([^:%[%]]+):(%d+)$") end
  port = tonumber(port)
  if not host or not port or port > 65535 then
    return nil, ("http.listen: %q must be HOST:PORT (like 127.0.0.1:8080 or [::1]:8080)"):format(s)
  end
  return host, port
end

function M.is_loopback(host)
  if LOOPBACK_NAMES[host] then return true end
  local u = http.parse("http://" .. (host:find(":", 1, true) and "[" .. host .. "]" or host) .. "/")
  return u ~= nil and u.ip == "loopback"
end

-- The host part of a Host header (without the port), lowercase.
local function host_of(h)
  if type(h) ~= "string" or h == "" then return nil end
  h = h:lower()
  local v6 = h:match("^(%[[%x:%.]+%])")
  if v6 then return v6 end
  return h:match("^([^:]+)")
end

local function has(list, v)
  for _, x in ipairs(list or {}) do if x == v then return true end end
  return false
end

local function jsonrpc_error(id, code, message, data)
  return json.encode({ jsonrpc = "2.0", id = id == nil and json.null or id,
                       error = { code = code, message = message, data = data } })
end

local function plain(status, code, message, extra)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(extra or {}) do h[k] = v end
  return status, h, jsonrpc_error(nil, code, message)
end

-- {{{ the transport of one HTTP session (or of one stateless request)

local Transport = {}
Transport.__index = Transport

local function new_transport(hs)
  return setmetatable({ hs = hs, waiters = {}, progress = {}, http = true }, Transport)
end

local function key(v)
  if type(v) == "number" then return ("n:%d"):format(v) end
  return "s:" .. tostring(v)
end

local function sse_event(line)
  return "event: message\ndata: " .. line .. "\n\n"
end

-- A waiter gets the answer to one request: as JSON (w.line, waking w.co)
-- or written to its event stream (w.stream), which then ends.
local function deliver(w, line, final)
  if w.stream then
    w.stream:write(sse_event(line))
    if final then w.stream:close() end
  elseif final then
    w.line = line
    if w.co then loop.wake(w.co) end
  end
end

function Transport:send(line, msg)
  if type(msg) ~= "table" or rawget(msg, 1) ~= nil then -- a batch's answers: to the request at hand
    if self.current then deliver(self.current, line, true) end
    return true
  end
  if msg.id ~= nil and (msg.result ~= nil or msg.error ~= nil) then
    local w = msg.id ~= json.null and self.waiters[key(msg.id)] or self.current
    if w then
      if w.id ~= nil then self.waiters[key(w.id)] = nil end
      if w.token ~= nil then self.progress[key(w.token)] = nil end
      deliver(w, line, true)
      -- a stateless request's session ends with its answer
      if self.hs.stateless and next(self.waiters) == nil then self.hs.session:close() end
    end
    return true
  end
  local params = type(msg.params) == "table" and msg.params or {}
  if msg.method == "notifications/progress" then
    local w = self.progress[key(params.progressToken)]
    if w and w.stream then w.stream:write(sse_event(line)) end
    return true
  end
  local sub = type(params._meta) == "table" and params._meta[mcp.META_SUBSCRIPTION]
  local w = sub ~= nil and self.waiters[key(sub)]
  if w and w.stream then
    w.stream:write(sse_event(line))
  elseif self.hs and self.hs.get_stream then
    self.hs.get_stream:write(sse_event(line))
  end
  return true
end

function Transport:close()
  if self.closed then return end
  self.closed = true
  for k, w in pairs(self.waiters) do
    self.waiters[k] = nil
    if w.stream then w.stream:close() elseif w.co then loop.wake(w.co) end
  end
  local hs = self.hs
  if hs then
    if hs.get_stream then hs.get_stream:close() end
    if hs.owner and hs.id then hs.owner.sessions[hs.id] = nil end
  end
end

-- }}}

function Http:origin_ok(req)
  local origin = req.headers.origin
  if origin == nil then return true end
  if has(self.cfg.allowed_origins, origin) then return true end
  local u = http.parse(origin)
  if not u or (u.scheme ~= "http" and u.scheme ~= "https") then return false end
  return self:host_allowed(u.host)
end

function Http:host_allowed(h)
  if not h then return false end
  if LOOPBACK_NAMES[h] then return true end
  return has(self.allowed_hosts, h)
end

-- The agent of the request's bearer token: an agent token (sbt_…), or,
-- with oauth configured, an access token of the issuer (may yield to fetch
-- its keys). Returns agent, or nil, err, status, code.
function Http:agent(req)
  local token = (req.headers.authorization or ""):match("^[Bb]earer +(%S+)%s*$")
  if not token then return nil, nil, 401, nil end
  if token:sub(1, 4) == "sbt_" or not self.oauth then
    local agent = directory.authenticate(self.server.db, token)
    if agent then return agent end
    return nil, "unknown or revoked agent token", 401, "invalid_token"
  end
  return self.oauth:authenticate(token)
end

function Http:unauthorized(message, err, status, code)
  local headers
  if status == 503 then
    headers = { ["Retry-After"] = "5" }
  elseif self.oauth then
    headers = { ["WWW-Authenticate"] = self.oauth:challenge(err, code) }
  else
    headers = { ["WWW-Authenticate"] = 'Bearer realm="switchboard", error="invalid_token"' }
  end
  if err then message = ("%s (%s)"):format(message, err) end
  return plain(status or 401, mcp.UNAUTHORIZED, message, headers)
end

function Http:new_session(agent, stateless)
  local srv = self.server
  srv.nconn = srv.nconn + 1
  local hs = { owner = self, last = loop.now(), agent_id = agent.id, stateless = stateless }
  local transport = new_transport(hs)
  local s = mcp.new(srv, nil, srv.nconn, transport)
  s.preauth = agent
  s.http = true
  hs.session, hs.transport = s, transport
  if not stateless then
    hs.id = vault.hex(vault.random(16))
    s.execution_id = ("http-%d-%d"):format(os.time(), s.n)
  else
    -- stateless requests have no connection to be the execution: without
    -- an execution id in _meta, the agent's stateless requests are one
    -- execution, so what one of them read taints the next (kept when this
    -- request's session closes; it ages out with the taint store)
    s.execution_id = ("http-stateless-%s"):format(agent.id)
    s.keep_taint = true
  end
  srv.sessions[s] = true
  srv.nsessions = srv.nsessions + 1
  return hs
end

-- Run one JSON-RPC message through the session; returns what the HTTP
-- handler answers.
function Http:dispatch(hs, msg, req, extra_headers)
  local s, t = hs.session, hs.transport
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(extra_headers or {}) do headers[k] = v end
  if type(msg) ~= "table" or msg.method == nil or msg.id == nil then
    -- a notification or a response: accepted, nothing to answer
    t.current = nil
    s:dispatch(msg)
    return 202, extra_headers or {}, ""
  end
  local id = mcp.as_id(msg.id)
  local params = type(msg.params) == "table" and msg.params or {}
  local meta = type(params._meta) == "table" and params._meta or {}
  local w = { id = id }
  local accept = (req.headers.accept or ""):lower()
  if (msg.method == "tools/call" or msg.method == "subscriptions/listen") and accept:find(SSE, 1, true) then
    -- a stateless request's session (its subscription) ends with its stream
    w.stream = httpd.stream{ on_close = function() if hs.stateless then s:close() end end }
    headers["Content-Type"] = SSE
    headers["Cache-Control"] = "no-cache"
  end
  if id ~= nil then
    if t.waiters[key(id)] then
      return 409, headers, jsonrpc_error(id, -32600, "a request with this id is already in progress")
    end
    t.waiters[key(id)] = w
    local token = mcp.as_id(meta.progressToken)
    if token ~= nil and w.stream then
      w.token = token
      t.progress[key(token)] = w
    end
  end
  t.current = w
  s:dispatch(msg)
  t.current = nil
  if w.stream then return 200, headers, w.stream end
  if not w.line and not t.closed then
    w.co = coroutine.running()
    loop.wait()
    w.co = nil
  end
  if not w.line then
    t.waiters[key(id)] = nil
    return 404, headers, jsonrpc_error(id, -32001, "the session ended before the answer")
  end
  return 200, headers, w.line
end

function Http:handle_mcp(req)
  local agent, aerr, astatus, acode = self:agent(req)
  if not agent then
    log.warn("http: %s %s from %s without a valid bearer token%s", req.method, req.path, req.remote,
      aerr and (": " .. aerr) or "")
    return self:unauthorized(self.oauth
      and "unauthorized: send an access token of the issuer, or the agent token, as Authorization: Bearer …"
      or "unauthorized: send the agent token as Authorization: Bearer sbt_…", aerr, astatus, acode)
  end
  local sid = req.headers["mcp-session-id"]
  local hs = sid and self.sessions[sid]
  if sid and not hs then
    return plain(404, -32001, "unknown or expired session: initialize again")
  end
  if hs and hs.agent_id ~= agent.id then
    return plain(403, mcp.UNAUTHORIZED, "forbidden: this session belongs to another agent")
  end
  local pv = req.headers["mcp-protocol-version"]
  if pv and not mcp.supported(pv) then
    return 400, { ["Content-Type"] = "application/json" }, jsonrpc_error(nil, mcp.UNSUPPORTED_VERSION,
      ("unsupported MCP-Protocol-Version %s (this server speaks %s)"):format(pv, table.concat(mcp.ALL_VERSIONS, ", ")),
      { requested = pv, supported = json.array(mcp.ALL_VERSIONS) })
  end
  if hs then hs.last = loop.now() end

  if req.method == "DELETE" then
    if not hs then return plain(400, -32600, "DELETE needs the Mcp-Session-Id header") end
    log.info("http: session of connection %d ended by the client", hs.session.n)
    hs.session:close()
    return 200, {}, ""
  end
  if req.method == "GET" then
    if not (req.headers.accept or ""):lower():find(SSE, 1, true) then
      return plain(405, -32600, "GET opens an event stream: send Accept: text/event-stream", { Allow = "POST, GET, DELETE" })
    end
    if not hs then return plain(405, -32600, "GET needs an Mcp-Session-Id (no stream without a session)",
      { Allow = "POST" }) end
    if hs.get_stream then return plain(409, -32600, "this session already has an event stream open") end
    local st
    st = httpd.stream{ on_close = function() if hs.get_stream == st then hs.get_stream = nil end end }
    hs.get_stream = st
    return 200, { ["Content-Type"] = SSE, ["Cache-Control"] = "no-cache", ["Mcp-Session-Id"] = hs.id }, st
  end
  if req.method ~= "POST" then
    return plain(405, -32600, "method not allowed: POST, GET or DELETE", { Allow = "POST, GET, DELETE" })
  end

  local ctype = (req.headers["content-type"] or ""):lower()
  if not ctype:find("application/json", 1, true) then
    return plain(415, -32600, "Content-Type must be application/json")
  end
  if not utf8.len(req.body) then
    return plain(400, -32700, "parse error: the message is not valid UTF-8 (RFC 8259)")
  end
  local msg, err = json.decode(req.body)
  if msg == nil then return plain(400, -32700, "parse error: " .. tostring(err)) end
  if type(msg) == "table" and rawget(msg, 1) ~= nil then
    return plain(400, -32600, "batches are not supported over HTTP: send one message per request")
  end
  if type(msg) ~= "table" then return plain(400, -32600, "invalid request: expected a JSON-RPC 2.0 object") end
  local params = type(msg.params) == "table" and msg.params or {}
  local meta = type(params._meta) == "table" and params._meta or {}
  local modern = meta[mcp.META_VERSION] ~= nil

  if msg.method == "initialize" and not modern then
    if self.server.nsessions >= self.server.cfg.limits.connections then
      return plain(503, -32000, "server busy: too many sessions", { ["Retry-After"] = "5" })
    end
    local fresh = self:new_session(agent)
    local status, h, body = self:dispatch(fresh, msg, req)
    if fresh.session.initialized_req then
      self.sessions[fresh.id] = fresh
      h["Mcp-Session-Id"] = fresh.id
      log.info("http: connection %d: session opened for agent %s from %s", fresh.session.n, agent.name, req.remote)
    else
      fresh.session:close()
    end
    return status, h, body
  end
  if hs then return self:dispatch(hs, msg, req, { ["Mcp-Session-Id"] = hs.id }) end
  if not modern and msg.method ~= "server/discover" then
    return plain(400, -32600, "Mcp-Session-Id is required: send initialize first (or a " .. mcp.MODERN
      .. " request with its _meta)")
  end
  -- 2026-07-28: a request's routing headers must match its body (400 with
  -- HeaderMismatch, answered to the request's id so the client can tell
  -- which call failed); notifications need none
  if modern and msg.id ~= nil then
    local id = mcp.as_id(msg.id)
    local function mismatch(message)
      return 400, { ["Content-Type"] = "application/json" }, jsonrpc_error(id, M.HEADER_MISMATCH, message)
    end
    if pv ~= nil and pv ~= meta[mcp.META_VERSION] then
      return mismatch("MCP-Protocol-Version does not match params._meta's protocol version")
    end
    if req.headers["mcp-method"] ~= msg.method then
      return mismatch("the Mcp-Method header must name the request's method")
    end
    local name = params.name
    if (msg.method == "tools/call") and req.headers["mcp-name"] ~= name then
      return mismatch("the Mcp-Name header must name the tool called")
    end
  end
  if self.server.nsessions >= self.server.cfg.limits.connections then
    return plain(503, -32000, "server busy: too many requests", { ["Retry-After"] = "5" })
  end
  -- its session lives until its answer (or its stream) ends
  local one = self:new_session(agent, true)
  local status, h, body = self:dispatch(one, msg, req)
  if type(body) == "string" then one.session:close() end
  return status, h, body
end

function Http:handle(req)
  local h = host_of(req.headers.host)
  if not self:host_allowed(h) then
    log.warn("http: refused a request for host %s from %s (DNS rebinding?)", tostring(h), req.remote)
    return 403, { ["Content-Type"] = "text/plain" }, "forbidden: unknown Host\n"
  end
  if not self:origin_ok(req) then
    log.warn("http: refused a request with Origin %s from %s", tostring(req.headers.origin), req.remote)
    return 403, { ["Content-Type"] = "text/plain" }, "forbidden: Origin not allowed\n"
  end
  if req.path == "/healthz" then
    return 200, { ["Content-Type"] = "text/plain", ["Cache-Control"] = "no-store" }, "ok\n"
  end
  if req.path == "/metrics" then
    local tok = self.cfg.metrics_token
    if tok then
      local given = (req.headers.authorization or ""):match("^[Bb]earer +(%S+)$")
      if not given or not vault.equal(vault.sha256(given), vault.sha256(tok)) then
        return 401, { ["WWW-Authenticate"] = 'Bearer realm="metrics"' }, ""
      end
    elseif not (M.is_loopback(req.remote) and LOOPBACK_NAMES[h or ""] and req.headers.forwarded == nil
                and req.headers["x-forwarded-for"] == nil) then
      -- a proxy on this host connects from loopback: what it relays carries
      -- the public Host or a forwarding header, and is not a loopback client
      return 403, { ["Content-Type"] = "text/plain" }, "forbidden: /metrics answers loopback clients only"
        .. " (or set http.metrics_token)\n"
    end
    return 200, { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" }, metrics.render(self.server)
  end
  if self.oauth and self.metadata_paths[req.path] and req.method == "GET" then
    -- RFC 9728: where a client finds the authorization server; no token
    return 200, { ["Content-Type"] = "application/json", ["Cache-Control"] = "max-age=300" },
      json.encode(self.oauth:metadata())
  end
  if req.path == "/mcp" then
    local ok, status, headers, body = xpcall(self.handle_mcp, debug.traceback, self, req)
    if not ok then
      log.error("http: %s %s failed: %s", req.method, req.path, tostring(status))
      return plain(500, -32603, "internal error (see the server log)")
    end
    return status, headers, body
  end
  local integration, send_id, token = req.path:match("/([%l][%l%d_]*)/status/(%d+)/([%w_-]+)$")
  if send_id and self.cfg.public_url then
    local ok, status, text = xpcall(self.handle_receipt, debug.traceback, self, req, integration,
      tonumber(send_id), token)
    if not ok then
      log.error("http: %s /%s/status/… failed: %s", req.method, integration, tostring(status))
      return 500, { ["Content-Type"] = "text/plain" }, "internal error\n"
    end
    return status, { ["Content-Type"] = "text/plain", ["Cache-Control"] = "no-store" }, text .. "\n"
  end
  return 404, { ["Content-Type"] = "text/plain" }, "not found\n"
end

-- A status callback (delivery receipt) for one send: a form-encoded POST;
-- the token in its path is what authenticates it (switchboard.sends.receipt).
function Http:handle_receipt(req, integration, send_id, token)
  if req.method ~= "POST" then return 405, "POST only" end
  local ctype = (req.headers["content-type"] or ""):lower()
  if not ctype:find("application/x-www-form-urlencoded", 1, true) then
    return 415, "Content-Type must be application/x-www-form-urlencoded"
  end
  local form = require("switchboard.form").parse(req.body)
  return require("switchboard.sends").receipt(self.server, integration, send_id, token, form, req.headers)
end

-- Sessions idle past limits.idle_seconds (no request, no call, no stream).
function Http:sweep()
  local idle = self.server.cfg.limits.idle_seconds
  for _, hs in pairs(self.sessions) do
    if loop.now() - hs.last > idle and hs.session.load.calls == 0 and not hs.get_stream then
      log.info("http: connection %d: session idle for %ds, closing", hs.session.n, idle)
      hs.session:close()
    end
  end
end

-- Start the listener of cfg.http; returns the Http or nil, err.
-- Under socket activation the socket systemd passed as "http" is served as
-- it is (its unit chooses the address; http.listen is then not used).
function M.start(server)
  local cfg = server.cfg.http
  local fd = server.passed and server.passed.http
  local host, port, where
  if fd then
    server.passed.http = nil
    local addr, aerr = httpd.socket_address(fd)
    if not addr then return nil, "the http socket passed by systemd: " .. aerr end
    host, where = addr, ("the http socket passed by systemd (fd %d, %s)"):format(fd, addr)
  else
    host, port = M.parse_listen(cfg.listen)
    if not host then return nil, port end
    where = "http.listen " .. cfg.listen
  end
  local loopback = M.is_loopback(host)
  local tls_cert, tls_key
  if cfg.tls_cert or cfg.tls_key then
    if not (cfg.tls_cert and cfg.tls_key) then return nil, "http.tls_cert and http.tls_key go together" end
    for _, k in ipairs({ "tls_cert", "tls_key" }) do
      local f, ferr = io.open(cfg[k], "rb")
      if not f then return nil, ("http.%s: %s"):format(k, ferr) end
      local text = f:read("a")
      f:close()
      if k == "tls_cert" then tls_cert = text else tls_key = text end
    end
  elseif not loopback and not cfg.behind_tls_proxy then
    return nil, ("%s is not a loopback address: set http.tls_cert and http.tls_key, or"
      .. " http.behind_tls_proxy = true when a TLS proxy is in front"):format(where)
  end
  local self = setmetatable({ server = server, cfg = cfg, sessions = {}, allowed_hosts = {},
                              metadata_paths = {} }, Http)
  if server.cfg.oauth and server.cfg.oauth.issuer then
    local auth, aerr = require("switchboard.oauth").new(server.cfg.oauth, { db = server.db })
    if not auth then return nil, aerr end
    self.oauth = auth
    for _, p in ipairs(auth:metadata_paths()) do self.metadata_paths[p] = true end
  end
  for _, h in ipairs(cfg.allowed_hosts) do self.allowed_hosts[#self.allowed_hosts + 1] = h:lower() end
  if cfg.public_url then
    -- providers' status callbacks come for the public URL's host
    local pu = http.parse(cfg.public_url)
    if not pu or (pu.scheme ~= "https" and not (pu.scheme == "http" and M.is_loopback(pu.host))) then
      return nil, ("http.public_url %q must be an https:// URL (http:// only for a loopback host)")
        :format(cfg.public_url)
    end
    self.allowed_hosts[#self.allowed_hosts + 1] = pu.host:lower()
  end
  if not loopback and host ~= "0.0.0.0" and host ~= "::" then
    self.allowed_hosts[#self.allowed_hosts + 1] = host:find(":", 1, true) and "[" .. host .. "]" or host
  end
  local srv, err = httpd.listen{ host = host, port = port, fd = fd, max_body = server.cfg.limits.line_bytes,
    tls_cert = tls_cert, tls_key = tls_key, handler = function(req) return self:handle(req) end }
  if not srv then return nil, ("%s: %s"):format(where, err) end
  self.httpd = srv
  self.port = srv:port()
  self.sweeper = loop.timer(30, 30, function() self:sweep() end)
  log.info("http: MCP on %s://%s:%d/mcp%s%s", tls_cert and "https" or "http",
    host:find(":", 1, true) and "[" .. host .. "]" or host, self.port,
    (not tls_cert and not loopback) and " (TLS from the proxy in front)" or "",
    fd and (" (systemd fd %d)"):format(fd) or "")
  return self
end

function Http:close()
  if self.sweeper then self.sweeper:close() self.sweeper = nil end
  if self.oauth then self.oauth:close() self.oauth = nil end
  for _, hs in pairs(self.sessions) do hs.session:close() end
  if self.httpd then self.httpd:close() self.httpd = nil end
end

return M
