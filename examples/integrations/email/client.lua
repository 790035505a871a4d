-- The SendGrid v3 client: JSON over core.http, the API key applied by C
-- as `Authorization: Bearer …` (a core.vault credential; the key is never
-- a Lua string). Errors come back as { message, code, status, field,
-- unknown }: unknown is true when a POST went out and no answer came back
-- (a timeout, a reset, a 5xx); such a request is never sent again.
local http = require("core.http")
local json = require("switchboard.json")

local M = {}
M.__index = M

-- opts: { credential, api (origin), timeout, ca_file }
function M.new(opts)
  assert(opts.credential, "credential required")
  assert(type(opts.api) == "string", "api host required")
  return setmetatable({ credential = opts.credential, api = opts.api:gsub("/+$", ""),
                        timeout = opts.timeout or 30, ca_file = opts.ca_file, requests = 0, retries = 0 }, M)
end

-- SendGrid's error body: { errors = { { message, field, help } } }.
local function provider_error(res, method)
  local body = json.decode(json.utf8_repair(res.body or ""))
  local first = type(body) == "table" and type(body.errors) == "table" and body.errors[1]
  local e = { status = res.status, code = res.status, unknown = method ~= "GET" and res.status >= 500 }
  if type(first) == "table" then
    e.message = type(first.message) == "string" and first.message or nil
    e.field = type(first.field) == "string" and first.field or nil
  end
  e.message = e.message or ("SendGrid answered HTTP %d"):format(res.status)
  return e
end

-- One request. req: { method, path, query, json }. Returns the decoded
-- body ({} when empty), the response; or nil, err.
function M:request(req)
  local method = req.method or "GET"
  self.requests = self.requests + 1
  local res, err, info = http.request({
    method = method, url = self.api .. req.path, query = req.query, auth = self.credential,
    body = req.json ~= nil and json.encode(req.json) or nil, timeout = self.timeout, ca_file = self.ca_file,
    headers = { Accept = "application/json", ["Content-Type"] = req.json ~= nil and "application/json" or nil },
  })
  if not res then
    local unknown = method ~= "GET" and info ~= nil and info.sent == true
    return nil, { transport = err, unknown = unknown,
                  message = unknown and ("the request went out but no answer came back (%s)"):format(err)
                    or ("SendGrid could not be reached (%s)"):format(err) }
  end
  if res.status < 200 or res.status > 299 then return nil, provider_error(res, method) end
  if res.body == "" then return {}, res end
  local body = json.decode(json.utf8_repair(res.body))
  if type(body) ~= "table" then
    return nil, { status = res.status, unknown = method ~= "GET",
                  message = "SendGrid answered with a body that is not JSON" }
  end
  return body, res
end

function M:get(path, query)
  return self:request({ method = "GET", path = path, query = query })
end

-- POST /v3/mail/send: 202 with the message's id in X-Message-Id.
-- Returns { message_id } or nil, err.
function M:send(payload)
  local body, res = self:request({ method = "POST", path = "/v3/mail/send", json = payload })
  if not body then return nil, res end
  if res.status ~= 202 then
    return nil, { status = res.status, unknown = true,
                  message = ("SendGrid answered HTTP %d instead of 202 Accepted"):format(res.status) }
  end
  return { message_id = res.headers["x-message-id"] }
end

return M
