-- A local stand-in for SendGrid's v3 API, on core.httpd, for tests and
-- demos: `switchboard sim email [--port N] [--port-file FILE]`.
--   GET  /v3/scopes      the key's scopes
--   POST /v3/mail/send   validated as SendGrid validates it; 202 + X-Message-Id
--   GET  /v3/messages    ?query=to_email="…"&limit=N (needs messages.read)
-- Every /v3 request needs `Authorization: Bearer <a known key>`. Errors
-- have SendGrid's shape { errors = { { message, field } } }.
-- Control (no auth): GET /__sim/stats; POST /__sim/fault { drop_send = n }
-- (the next n sends are taken, then the connection is dropped unanswered),
-- { status = 500 } (the next send answers that, not taken), POST
-- /__sim/revoke { id = key id }.
local loop = require("core.loop")
local httpd = require("core.httpd")
local vault = require("core.vault")
local json = require("switchboard.json")
local form = require("switchboard.form")
local schema = require("switchboard.schema")
local time = require("switchboard.time")

local M = { commands = {} }

local function pad(s, n) return s .. ("0"):rep(n - #s) end
local function key(id, secret) return "SG." .. pad(id, 22) .. "." .. pad(secret, 43) end

-- The fixture's keys (tests use them): whole key → { id, scopes }.
M.KEYS = {
  main = key("AcmeMainKey", "acme-main-secret-"),
  send_only = key("AcmeSendOnly", "acme-send-only-secret-"),
  read_only = key("AcmeReadOnly", "acme-read-only-secret-"),
}
local SCOPES = { main = { "mail.send", "messages.read", "scopes.read" }, send_only = { "mail.send" },
                 read_only = { "messages.read" } }
M.SENDERS = { "clinic@example.com", "front@example.com" }

local function errors(status, message, field)
  return status, { ["Content-Type"] = "application/json" },
    json.encode({ errors = json.array({ { message = message, field = field or json.null, help = json.null } }) })
end

local function ok_json(status, v, headers)
  headers = headers or {}
  headers["Content-Type"] = "application/json"
  return status, headers, json.encode(v)
end

local function email_ok(s) return type(s) == "string" and schema.formats.email.check(s) end

-- The checks of POST /v3/mail/send, in SendGrid's words; nil when valid.
local function check_mail(b, senders)
  if type(b) ~= "table" then return 400, "Bad Request", json.null end
  local ps = b.personalizations
  if type(ps) ~= "table" or #ps == 0 then
    return 400, "The personalizations field is required and must have at least one personalization.",
      "personalizations"
  end
  for i, p in ipairs(ps) do
    if type(p) ~= "table" or type(p.to) ~= "table" or #p.to == 0 then
      return 400, "The to array is required for all personalization objects, and must have at least one email"
        .. " object with a valid email address.", ("personalizations.%d.to"):format(i - 1)
    end
    for j, t in ipairs(p.to) do
      if type(t) ~= "table" or not email_ok(t.email) then
        return 400, "Does not contain a valid address.", ("personalizations.%d.to.%d.email"):format(i - 1, j - 1)
      end
    end
  end
  if type(b.from) ~= "table" or not email_ok(b.from.email) then
    return 400, "The from object must be provided for every email send. It is an object that requires the email"
      .. " parameter, but may also contain a name parameter.", "from.email"
  end
  if type(b.subject) ~= "string" or b.subject == "" then
    return 400, "The subject is required. You can get around this requirement if you use a template with a"
      .. " subject defined or if every personalization has a subject defined.", "subject"
  end
  if type(b.content) ~= "table" or #b.content == 0 then
    return 400, "Unless a valid template_id is provided, the content parameter is required. There must be at"
      .. " least one defined content block.", "content"
  end
  for i, c in ipairs(b.content) do
    if type(c) ~= "table" or type(c.type) ~= "string" or c.type == "" then
      return 400, "The content type must be a string at least one character in length.",
        ("content.%d.type"):format(i - 1)
    end
    if type(c.value) ~= "string" or c.value == "" then
      return 400, "The content value must be a string at least one character in length.",
        ("content.%d.value"):format(i - 1)
    end
  end
  if not senders[b.from.email] then
    return 403, "The from address does not match a verified Sender Identity. Mail cannot be sent until this"
      .. " error is resolved.", "from"
  end
  return nil
end

-- opts: { host, port }. Returns { port, url, state, close } or nil, err.
function M.start(opts)
  local state = { requests = 0, sends = 0, send_posts = 0, messages = {}, faults = {}, revoked = {},
                  last_auth = nil }
  local by_key, senders = {}, {}
  for name, k in pairs(M.KEYS) do by_key[k] = { id = k:sub(4, 25), scopes = SCOPES[name] } end
  for _, s in ipairs(M.SENDERS) do senders[s] = true end

  local function has(k, scope)
    for _, s in ipairs(k.scopes) do if s == scope then return true end end
    return false
  end

  local function control(req)
    local body = json.decode(req.body ~= "" and req.body or "{}") or {}
    if req.path == "/__sim/stats" then
      return ok_json(200, { requests = state.requests, sends = state.sends, send_posts = state.send_posts,
                            messages = json.array(state.messages), last_auth = state.last_auth or json.null })
    elseif req.path == "/__sim/fault" and req.method == "POST" then
      state.faults[#state.faults + 1] = body
      return ok_json(200, { faults = #state.faults })
    elseif req.path == "/__sim/revoke" and req.method == "POST" then
      state.revoked[tostring(body.id)] = true
      return ok_json(200, { revoked = body.id })
    end
    return errors(404, "not found")
  end

  local function api(req)
    state.requests = state.requests + 1
    local auth = req.headers.authorization or ""
    state.last_auth = auth:match("^(%a+) ") or auth
    local k = by_key[auth:match("^Bearer (%S+)$") or ""]
    if not k or state.revoked[k.id] then return errors(401, "The provided authorization grant is invalid,"
      .. " expired, or revoked") end
    if req.path == "/v3/scopes" and req.method == "GET" then
      return ok_json(200, { scopes = json.array(k.scopes) })
    elseif req.path == "/v3/mail/send" and req.method == "POST" then
      state.send_posts = state.send_posts + 1
      if not has(k, "mail.send") then return errors(403, "access forbidden") end
      if not (req.headers["content-type"] or ""):find("^application/json") then
        return errors(415, "Content-Type should be application/json.")
      end
      local b = json.decode(req.body)
      local status, message, field = check_mail(b, senders)
      if status then return errors(status, message, field) end
      local fault = table.remove(state.faults, 1)
      if fault and fault.status then return errors(fault.status, "Internal server error") end
      state.sends = state.sends + 1
      local id = vault.base64url(vault.random(16)):sub(1, 22)
      for _, p in ipairs(b.personalizations) do
        for _, t in ipairs(p.to) do
          table.insert(state.messages, 1, { msg_id = id .. ".filter0001", from_email = b.from.email,
            to_email = t.email, subject = p.subject or b.subject, status = "delivered", opens_count = 0,
            clicks_count = 0, last_event_time = time.now() })
        end
      end
      if fault and fault.drop_send then return end -- taken, but no answer
      return 202, { ["X-Message-Id"] = id }, ""
    elseif req.path == "/v3/messages" and req.method == "GET" then
      if not has(k, "messages.read") then return errors(403, "access forbidden") end
      local q = form.parse(req.query)
      local to = type(q.query) == "string" and q.query:match('^to_email="([^"]+)"$')
      if not to then return errors(400, "invalid query: only to_email=\"…\" is supported here", "query") end
      local limit = math.tointeger(tonumber(q.limit or 10))
      if not limit or limit < 1 or limit > 1000 then
        return errors(400, "limit must be an integer from 1 to 1000", "limit")
      end
      local out = {}
      for _, m in ipairs(state.messages) do
        if m.to_email == to and #out < limit then out[#out + 1] = m end
      end
      return ok_json(200, { messages = json.array(out) })
    end
    return errors(404, "not found")
  end

  local server, err = httpd.listen({ host = opts.host or "127.0.0.1", port = opts.port or 0, handler = function(req)
    if req.path:sub(1, 7) == "/__sim/" then return control(req) end
    return api(req)
  end })
  if not server then return nil, err end
  local port = server:port()
  return { port = port, url = ("http://127.0.0.1:%d"):format(port), state = state,
           close = function() server:close() end }
end

-- `switchboard sim email [--config FILE] [--host H] [--port N] [--port-file FILE]`
-- (--config is the dispatcher's: it names the integration_dirs that hold this package)
function M.commands.sim(args)
  local opts, i = {}, 1
  while args[i] do
    local name, value = args[i]:match("^%-%-([%w%-]+)$"), args[i + 1]
    if not (name == "host" or name == "port" or name == "port-file" or name == "config") or value == nil then
      io.stderr:write("usage: switchboard sim email [--config FILE] [--host 127.0.0.1] [--port N] [--port-file FILE]\n")
      return 2
    end
    opts[name], i = value, i + 2
  end
  local s, err = M.start({ host = opts.host, port = math.tointeger(tonumber(opts.port or 0)) })
  if not s then io.stderr:write("switchboard sim email: ", tostring(err), "\n") return 1 end
  if opts["port-file"] then
    local f = assert(io.open(opts["port-file"] .. ".tmp", "w"))
    f:write(s.port, "\n")
    f:close()
    assert(os.rename(opts["port-file"] .. ".tmp", opts["port-file"]))
  end
  io.stdout:write("email simulator listening on ", s.url, "\n")
  io.stdout:flush()
  local signals = {}
  local function stop()
    s.close()
    for _, h in ipairs(signals) do h:close() end
    loop.stop()
  end
  signals[1] = loop.signal("TERM", stop)
  signals[2] = loop.signal("INT", stop)
  loop.run()
  return 0
end

return M
