-- One MCP session: JSON-RPC 2.0 over a transport. On the agent socket the
-- transport is the stream (newline-delimited messages, read by Session:run);
-- over HTTP (switchboard.http_server) it hands each message to the HTTP
-- request or event stream waiting for it. The read loop answers cheap
-- methods inline and runs each tools/call in a coroutine of its own, so
-- one slow call never holds up the others.
--
-- Protocol 2026-07-28 (stateless) rides beside the 2025 versions: a request
-- whose params._meta names its protocol version is answered on its own,
-- with no initialize, by a view of the session bound to the agent of that
-- request (its token: the HTTP bearer, _meta["io.switchboard/token"], or a
-- prior initialize on the same connection).
local loop = require("core.loop")
local json = require("switchboard.json")
local log = require("switchboard.log")
local directory = require("switchboard.directory")
local pipeline = require("switchboard.pipeline")

local M = {}

M.VERSIONS = { "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05" }
local SUPPORTED = {}
for _, v in ipairs(M.VERSIONS) do SUPPORTED[v] = true end
M.LATEST = M.VERSIONS[1]
-- the stateless revision, and every version this server speaks
M.MODERN = "2026-07-28"
M.ALL_VERSIONS = { M.MODERN }
for _, v in ipairs(M.VERSIONS) do M.ALL_VERSIONS[#M.ALL_VERSIONS + 1] = v end
M.META_VERSION = "io.modelcontextprotocol/protocolVersion"
M.META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
M.META_CLIENT = "io.modelcontextprotocol/clientInfo"
M.META_SERVER = "io.modelcontextprotocol/serverInfo"
M.META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
M.UNSUPPORTED_VERSION = -32022
M.SERVER_INFO = { name = "switchboard", title = "Switchboard", version = "0.1.0" }

-- Is v a version this server speaks (any era)?
function M.supported(v)
  return v == M.MODERN or SUPPORTED[v] == true
end
M.TOKEN_KEY = "io.switchboard/token"
M.SENDER_KEY = "io.switchboard/sender"
M.EXECUTION_KEY = "io.switchboard/execution"

local PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL =
  -32700, -32600, -32601, -32602, -32603
local UNAUTHORIZED = -32010 -- not -32001: the MCP SDK uses that for its own timeouts
M.UNAUTHORIZED = UNAUTHORIZED

local Session = {}
Session.__index = Session

-- A request id as a table key: 1 and "1" stay apart.
local function id_key(v)
  if type(v) == "number" then return ("n:%d"):format(v) end
  return "s:" .. tostring(v)
end

-- Below 2^53 every integer is one IEEE double: a larger number in the
-- JSON text may have been rounded on the way in.
local MAX_ID = 2 ^ 53

-- A valid request id as this server keeps it (a string or an integer), or
-- nil: a number must be a whole number that came in exactly and goes back
-- out as the same digits (no 1e400, 2^63, 1.5 or -0.5).
local function as_id(v)
  if type(v) == "string" then return v end
  if type(v) ~= "number" or v ~= v or v <= -MAX_ID or v >= MAX_ID then return nil end
  local i = math.tointeger(v)
  if i == nil or json.encode(i) ~= tostring(i) then return nil end
  return i
end
M.as_id = as_id

local ENCODE_FAILED = '{"jsonrpc":"2.0","id":null,"error":{"code":-32603,'
  .. '"message":"internal error: the answer could not be encoded"}}'

-- The line for msg, never raising: a message that cannot be encoded, or
-- whose text is not valid UTF-8, becomes an internal error.
function Session:encode(msg)
  local ok, line = pcall(json.encode, msg)
  if ok and not utf8.len(line) then ok, line = false, "the message is not valid UTF-8" end
  if ok then return line end
  log.error("mcp: connection %d: could not encode a message: %s", self.n, tostring(line))
  if msg.id == nil then return nil end -- a notification: dropped
  ok, line = pcall(json.encode, { jsonrpc = "2.0", id = as_id(msg.id) or json.null,
    error = { code = INTERNAL, message = "internal error: the answer could not be encoded" } })
  return ok and line or ENCODE_FAILED
end

-- The socket's transport: one message a line; a failed write closes.
function M.stream_transport(stream)
  return {
    send = function(_, line) return stream:write(line .. "\n") end,
    close = function() stream:close() end,
  }
end

-- msg: the message the line encodes (a transport may route by it).
function Session:write(line, msg)
  if line and not self.closed and not self.transport:send(line, msg) then self:close() end
end

function Session:send(msg)
  if self.closed then return end
  msg.jsonrpc = "2.0"
  if self.batch and self.batch_open and msg.id ~= nil then
    self.batch[#self.batch + 1] = msg
    return
  end
  local line = self:encode(msg)
  if line and msg.result and msg.result.content and #line > self.server.cfg.limits.result_bytes then
    local limit = self.server.cfg.limits.result_bytes
    log.warn("mcp: connection %d: a tool result of %d bytes was over limits.result_bytes", self.n, #line)
    line = self:encode({ jsonrpc = "2.0", id = msg.id, result = pipeline.result(("The result was too large"
      .. " to return (%d bytes; the limit is %d). Ask for less, for example with a smaller limit or narrower"
      .. " dates."):format(#line, limit), nil, true) })
  end
  self:write(line, msg)
end

function Session:reply(id, res)
  -- 2026-07-28: every result says what kind it is and names the server
  if self.modern and type(res) == "table" then
    res.resultType = res.resultType or "complete"
    local meta = type(res._meta) == "table" and res._meta or {}
    meta[M.META_SERVER] = meta[M.META_SERVER] or M.SERVER_INFO
    res._meta = meta
  end
  self:send({ id = id, result = res })
end

function Session:fail(id, code, message, data)
  self:send({ id = id == nil and json.null or id, error = { code = code, message = message, data = data } })
end

function Session:notify(method, params)
  self:send({ method = method, params = params })
end

function Session:close()
  if self.closed then return end
  self.closed = true
  -- the taint of the connection's own execution goes with it (not that of
  -- an execution that outlives the session: stateless HTTP requests)
  if not self.keep_taint then require("switchboard.taint").forget(self.server, self.agent, self.execution_id) end
  for _, call in pairs(self.calls) do call.cancelled = true end
  self.transport:close()
  self.server:forget(self)
end

-- What this agent sees, shaped for the negotiated version.
function Session:tool_list()
  local out = {}
  local v = self.version
  for _, t in ipairs(self.server.registry:visible(self.agent.groups, self.tenant.enabled)) do
    local item = { name = t.name, description = t.description, inputSchema = t.exported }
    if v >= "2025-03-26" then item.annotations = t.annotations end
    if v >= "2025-06-18" then
      item.title = t.title
      item.outputSchema = t.exported_output
    end
    out[#out + 1] = item
  end
  return out
end

function Session:instructions()
  local seen, parts = {}, {}
  for _, t in ipairs(self.server.registry:visible(self.agent.groups, self.tenant.enabled)) do
    if t.instructions and not seen[t.instructions] then
      seen[t.instructions] = true
      parts[#parts + 1] = t.instructions
    end
  end
  if #parts == 0 then return nil end
  return table.concat(parts, "\n\n")
end

local handlers = {}

function handlers.initialize(self, id, params)
  if self.initialized_req then
    return self:fail(id, INVALID_REQUEST, "initialize was already called on this connection")
  end
  if type(params) ~= "table" then
    return self:fail(id, INVALID_PARAMS, "initialize: params must be an object")
  end
  if type(params.protocolVersion) ~= "string" then
    return self:fail(id, INVALID_PARAMS, "initialize: params.protocolVersion must be a string")
  end
  local meta = type(params._meta) == "table" and params._meta or {}
  -- over HTTP the agent comes from the request's bearer token
  local agent = self.preauth or directory.authenticate(self.server.db, meta[M.TOKEN_KEY])
  if not agent then
    log.warn("mcp: connection %d: initialize with a missing or unknown agent token", self.n)
    return self:fail(id, UNAUTHORIZED, ("unauthorized: params._meta[\"%s\"] must carry a valid agent token")
      :format(M.TOKEN_KEY))
  end
  self:bind(agent)
  -- negotiation (2025): a version not offered gets the latest 2025 one,
  -- which the client may refuse; 2026-07-28 has no initialize
  self.version = SUPPORTED[params.protocolVersion] and params.protocolVersion or M.LATEST
  self.initialized_req = true
  self.client = type(params.clientInfo) == "table" and params.clientInfo or {}
  log.info("mcp: connection %d: agent %s of tenant %s (%s) initialized, protocol %s",
    self.n, agent.name, self.tenant.name, agent.type, self.version)
  self:reply(id, {
    protocolVersion = self.version,
    capabilities = { tools = { listChanged = true } },
    serverInfo = M.SERVER_INFO,
    instructions = self:instructions(),
  })
end

-- Bind the session (or a request's view of it) to an authenticated agent.
function Session:bind(agent)
  self.agent = agent
  self.tenant = { id = agent.tenant_id, name = agent.tenant_name, data_key = agent.tenant_data_key,
                  features = directory.decode_list(agent.tenant_features),
                  enabled = directory.tenant_groups(self.server.db, agent.tenant_id) }
  self.fingerprint = self.server.registry:view_fingerprint(agent.groups, self.tenant.enabled)
end

-- 2026-07-28: a cacheable result (tools/list, server/discover) says for how
-- long and for whom: never cached (the view changes with the agent's groups),
-- and private (it is this agent's view).
local function uncached(res)
  res.ttlMs, res.cacheScope = 0, "private"
  return res
end

-- 2026-07-28: what the server offers, with no session and no state.
function handlers.discover(self, id)
  self:reply(id, uncached({
    supportedVersions = json.array(M.ALL_VERSIONS),
    capabilities = { tools = { listChanged = true } },
    serverInfo = M.SERVER_INFO,
    instructions = self.agent and self:instructions() or nil,
    _meta = { [M.META_SERVER] = M.SERVER_INFO },
  }))
end

-- 2026-07-28: a long-lived request; first notifications/subscriptions/acknowledged
-- with the filter honoured (of params.notifications, only toolsListChanged:
-- this server has no prompts or resources; no filter means every list this
-- server has), then the list changes of this agent's view, all tagged with
-- the request's id, until the client cancels it or the connection ends (no
-- result until then).
function handlers.listen(self, id, params)
  local filter = type(params) == "table" and params.notifications or nil
  if filter ~= nil and (type(filter) ~= "table" or rawget(filter, 1) ~= nil) then
    return self:fail(id, INVALID_PARAMS, "subscriptions/listen: params.notifications must be an object"
      .. " (like {\"toolsListChanged\": true})")
  end
  local tools = filter == nil or filter.toolsListChanged == true
  self:notify("notifications/subscriptions/acknowledged", { _meta = { [M.META_SUBSCRIPTION] = id },
    notifications = tools and { toolsListChanged = true } or {} })
  if tools then
    self.subscriptions[id_key(id)] = { id = id, view = self, fingerprint = self.fingerprint }
  end
end

function handlers.ping(self, id)
  self:reply(id, {})
end

function handlers.list_tools(self, id, params)
  if type(params) == "table" and params.cursor ~= nil then
    return self:fail(id, INVALID_PARAMS, "tools/list: unknown cursor (this server returns every tool in one page)")
  end
  local res = { tools = json.array(self:tool_list()) }
  self:reply(id, self.modern and uncached(res) or res)
end

local function sender_tier(self, meta)
  local asserted = meta[M.SENDER_KEY]
  if self.agent.trusted_sender and directory.TIERS[asserted] then return asserted end
  return self.agent.default_tier or "external"
end

function handlers.call_tool(self, id, params)
  if type(params) ~= "table" or type(params.name) ~= "string" then
    return self:fail(id, INVALID_PARAMS, "tools/call: params.name must be the tool's name")
  end
  local args = params.arguments
  if args ~= nil and args ~= json.null and (type(args) ~= "table" or (next(args) ~= nil and rawget(args, 1) ~= nil)) then
    return self:fail(id, INVALID_PARAMS, "tools/call: params.arguments must be an object")
  end
  if self.server.draining then
    return self:fail(id, -32000, "the server is shutting down; try again shortly")
  end
  local tool = self.server.registry:find(params.name, self.agent.groups, self.tenant.enabled)
  if not tool then
    return self:fail(id, INVALID_PARAMS, ("unknown tool: %s (tools/list shows the tools this agent may call)")
      :format(params.name))
  end
  local key = id_key(id)
  if self.calls[key] then
    return self:fail(id, INVALID_REQUEST, "a request with this id is already in progress")
  end
  if self.load.calls >= self.server.cfg.limits.calls_per_connection then
    return self:fail(id, -32000, ("too many calls in progress on this connection (at most %d)")
      :format(self.server.cfg.limits.calls_per_connection))
  end
  local meta = type(params._meta) == "table" and params._meta or {}
  local call = { id = id, cancelled = false }
  self.calls[key] = call
  self.load.calls = self.load.calls + 1
  local progress
  local token = as_id(meta.progressToken)
  if token ~= nil then
    -- progress per token only increases (MCP): a value not above the last
    -- one sent is dropped
    local last
    progress = function(p, total, message)
      if call.cancelled or call.done or type(p) ~= "number" or p ~= p or p == math.huge then return end
      if last and p <= last then return end
      if type(total) ~= "number" or total ~= total or total == math.huge then total = nil end
      last = p
      self:notify("notifications/progress", { progressToken = token, progress = p, total = total,
        message = self.version >= "2025-03-26" and type(message) == "string" and message or nil })
    end
  end
  self.server.inflight = self.server.inflight + 1
  -- the deadline: the tool's own timeout, else limits.call_seconds. Past it
  -- the agent is answered; the handler's late answer is dropped.
  local seconds = tool.timeout or self.server.cfg.limits.call_seconds
  local deadline = loop.timer(seconds, 0, function()
    if call.done or call.cancelled then return end
    call.cancelled = true
    log.warn("mcp: connection %d: %s did not finish within %g s", self.n, tool.name, seconds)
    self:reply(id, pipeline.result(("The tool %s did not finish within %g seconds. %s"):format(tool.name, seconds,
      require("switchboard.registry").writes(tool, args ~= json.null and args or nil)
        and "If it was sending, the outcome is unknown: check with a search before trying again."
        or "Try again later."), nil, true))
  end)
  loop.spawn(function()
    local ok, res = pcall(pipeline.run, self.server, {
      session = self, tool = tool, args = args ~= json.null and args or nil, id = id,
      execution_id = type(meta[M.EXECUTION_KEY]) == "string" and meta[M.EXECUTION_KEY]:sub(1, 128)
        or self.execution_id,
      sender = sender_tier(self, meta), progress = progress,
      is_cancelled = function() return call.cancelled end,
    })
    call.done = true
    deadline:close()
    self.calls[key] = nil
    self.load.calls = self.load.calls - 1
    self.server.inflight = self.server.inflight - 1
    if not ok or (res ~= nil and type(res) ~= "table") then
      log.error("mcp: tools/call %s failed: %s", tool.name, tostring(res))
      if not call.cancelled then self:fail(id, INTERNAL, "internal error") end
    elseif not call.cancelled and res then
      if self.version < "2025-06-18" then res.structuredContent = nil end
      self:reply(id, res)
    end
    self.server:call_done()
  end)
end

function handlers.cancelled(self, params)
  if type(params) ~= "table" then return end
  local rid = as_id(params.requestId)
  if rid == nil then return end
  local sub = self.subscriptions[id_key(rid)]
  if sub then
    self.subscriptions[id_key(rid)] = nil
    return
  end
  local call = self.calls[id_key(rid)]
  if call then
    call.cancelled = true
    log.info("mcp: connection %d: request %s cancelled by the client", self.n, tostring(params.requestId))
  end
end

local methods = {
  initialize = handlers.initialize,
  ping = handlers.ping,
  ["tools/list"] = handlers.list_tools,
  ["tools/call"] = handlers.call_tool,
  ["server/discover"] = handlers.discover,
  ["subscriptions/listen"] = handlers.listen,
}
-- methods of one era only
local MODERN_ONLY = { ["subscriptions/listen"] = true }
local LEGACY_ONLY = { initialize = true }
local notifications = {
  ["notifications/initialized"] = function(self) self.ready = true end,
  ["notifications/cancelled"] = handlers.cancelled,
}
local PRE_INIT = { initialize = true, ping = true, ["server/discover"] = true }

-- A 2026-07-28 request: its own version, capabilities and agent. Returns
-- the view of the session that answers it, or nil after answering an error.
function Session:modern_view(id, meta)
  local v = meta[M.META_VERSION]
  if v ~= M.MODERN then
    self:fail(id, M.UNSUPPORTED_VERSION, ("unsupported protocol version: %s (this server speaks %s)")
      :format(tostring(v), table.concat(M.ALL_VERSIONS, ", ")),
      { requested = type(v) == "string" and v or json.null, supported = json.array(M.ALL_VERSIONS) })
    return nil
  end
  local view = setmetatable({ version = M.MODERN, modern = true, initialized_req = true,
    client_capabilities = type(meta[M.META_CAPABILITIES]) == "table" and meta[M.META_CAPABILITIES] or {} },
    { __index = self })
  local agent = self.preauth
  if not agent and meta[M.TOKEN_KEY] ~= nil then
    agent = directory.authenticate(self.server.db, meta[M.TOKEN_KEY])
    if not agent then
      self:fail(id, UNAUTHORIZED, ("unauthorized: params._meta[\"%s\"] is not a valid agent token"):format(M.TOKEN_KEY))
      return nil
    end
  end
  if agent then
    view:bind(agent)
  elseif self.agent then
    view.agent, view.tenant, view.fingerprint = self.agent, self.tenant, self.fingerprint
  else
    view.initialized_req = false
  end
  return view
end

-- Handle one decoded message (an object).
function Session:dispatch(msg)
  if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" then
    return self:fail(type(msg) == "table" and as_id(msg.id) or nil, INVALID_REQUEST,
      "invalid request: expected a JSON-RPC 2.0 object with \"jsonrpc\": \"2.0\"")
  end
  local method, id = msg.method, as_id(msg.id)
  if method == nil and (msg.result ~= nil or msg.error ~= nil) then
    return -- a response to a request we never send: ignore
  end
  if type(method) ~= "string" then
    return self:fail(id, INVALID_REQUEST, "invalid request: \"method\" must be a string")
  end
  if msg.id == nil then
    local fn = notifications[method]
    -- a cancel may come before any initialize: a 2026-07-28 request's
    if fn then fn(self, msg.params) end
    return
  end
  if id == nil then
    return self:fail(nil, INVALID_REQUEST, "invalid request: \"id\" must be a string or an integer"
      .. " (not a fraction, and small enough to be answered with the same digits)")
  end
  local fn = methods[method]
  if not fn then
    return self:fail(id, METHOD_NOT_FOUND, ("method not found: %s"):format(method))
  end
  local target = self
  local meta = type(msg.params) == "table" and type(msg.params._meta) == "table" and msg.params._meta or nil
  local v = meta and meta[M.META_VERSION]
  if v ~= nil and not LEGACY_ONLY[method] and (v == M.MODERN or not self.initialized_req) then
    target = self:modern_view(id, meta)
    if not target then return end
    if not target.agent and method ~= "server/discover" then
      return self:fail(id, UNAUTHORIZED, ("unauthorized: a %s request needs the agent token (params._meta[\"%s\"],"
        .. " or the HTTP bearer)"):format(M.MODERN, M.TOKEN_KEY))
    end
  elseif MODERN_ONLY[method] then
    return self:fail(id, METHOD_NOT_FOUND, ("method not found: %s (protocol %s only)"):format(method, M.MODERN))
  elseif not self.initialized_req and not PRE_INIT[method] then
    return self:fail(id, INVALID_REQUEST, "the session is not initialized: send initialize with the agent token first")
  end
  local ok, err = xpcall(fn, debug.traceback, target, id, msg.params)
  if not ok then
    log.error("mcp: connection %d: %s failed: %s", self.n, method, tostring(err))
    self:fail(id, INTERNAL, "internal error (see the server log)")
  end
end

function Session:handle_line(line)
  if line:match("^%s*$") then return end
  if not utf8.len(line) then
    return self:fail(nil, PARSE_ERROR, "parse error: the message is not valid UTF-8 (RFC 8259)")
  end
  if self.version ~= "2025-03-26" and line:match("^%s*%[") then
    return self:fail(nil, INVALID_REQUEST, "batches are not supported in this protocol version")
  end
  local msg, err = json.decode(line)
  if msg == nil then
    return self:fail(nil, PARSE_ERROR, "parse error: " .. tostring(err))
  end
  if type(msg) == "table" and rawget(msg, 1) ~= nil then
    return self:handle_batch(msg)
  end
  self:dispatch(msg)
end

-- A batch (2025-03-26 only): at most limits.batch_items items; between
-- slices of BATCH_SLICE items the loop serves others. Answers produced
-- while the batch is handled go back as one array; a tools/call that
-- waits answers later on its own.
local BATCH_SLICE = 16

function Session:handle_batch(msg)
  if self.version ~= "2025-03-26" then
    return self:fail(nil, INVALID_REQUEST, "batches are not supported in this protocol version")
  end
  local limit = self.server.cfg.limits.batch_items
  if #msg > limit then
    return self:fail(nil, INVALID_REQUEST, ("invalid request: a batch of %d items is over limits.batch_items"
      .. " (at most %d)"):format(#msg, limit))
  end
  self.batch = {}
  for i, m in ipairs(msg) do
    self.batch_open = true
    self:dispatch(m)
    self.batch_open = false
    if i % BATCH_SLICE == 0 then loop.sleep(0) end
    if self.closed then break end
  end
  local replies = self.batch
  self.batch = nil
  if #replies > 0 then self:write(self:encode(replies)) end
end

-- The read loop of one connection; returns when it closes. Until a
-- successful initialize the connection has limits.initialize_seconds from
-- its accept (blank lines or failed attempts do not extend it).
function Session:run()
  local limits = self.server.cfg.limits
  while not self.closed do
    local timeout = limits.idle_seconds
    if not self.initialized_req then
      timeout = math.min(timeout, self.init_deadline - loop.time())
      if timeout <= 0 then
        log.info("mcp: connection %d: no initialize within %gs, closing", self.n, limits.initialize_seconds)
        self:fail(nil, INVALID_REQUEST, ("initialize did not arrive within %g seconds (limits.initialize_seconds);"
          .. " closing the connection"):format(limits.initialize_seconds))
        break
      end
    end
    local line, err = self.stream:read_line(limits.line_bytes, timeout)
    if line then
      self:handle_line(line)
    elseif err == "line too long" then
      self:fail(nil, INVALID_REQUEST, ("request too large: a message may be at most %d bytes"):format(limits.line_bytes))
    elseif err == "timeout" and not self.initialized_req then
      goto continue -- the deadline check above closes it
    else
      if err == "timeout" then
        if self.load.calls > 0 then goto continue end
        log.info("mcp: connection %d: idle for %ds, closing", self.n, limits.idle_seconds)
      end
      break
    end
    ::continue::
  end
  self:close()
end

-- Run the session; whatever error ends it, the connection is closed and
-- its slot freed (the error goes to the log).
function Session:serve()
  local ok, err = xpcall(self.run, debug.traceback, self)
  if not ok then
    log.error("mcp: connection %d: the session failed and was closed: %s", self.n, tostring(err))
  end
  self:close()
end

-- stream: the socket's Stream (read by run), or nil with a transport
-- ({ send = fn(self, line, msg) → ok, close = fn(self) }).
function M.new(server, stream, n, transport)
  return setmetatable({ server = server, stream = stream, n = n, calls = {}, load = { calls = 0 },
                        subscriptions = {}, transport = transport or M.stream_transport(stream),
                        version = M.LATEST, execution_id = ("conn-%d-%d"):format(os.time(), n),
                        init_deadline = loop.time() + server.cfg.limits.initialize_seconds },
                      Session)
end

return M
