-- The Twilio REST client. Hosts per product come from the connection or
-- the config; HTTP Basic uses the API key from a vault credential handle
-- (the secret never becomes a Lua string). Retries only 429s Twilio says
-- were not processed (code 20429 or none), at most 3 times with capped
-- full-jitter backoff and Retry-After honoured; never resends a POST whose
-- outcome is unknown.
local http = require("core.http")
local loop = require("core.loop")
local json = require("switchboard.json")
local log = require("switchboard.log")

local M = {}
M.__index = M

M.MAX_RETRIES = 3
M.MAX_WAIT = 3.0        -- seconds, one backoff
M.TOTAL_WAIT = 10.0     -- seconds, all backoffs of one request
M.API_VERSION = "2010-04-01"
M.retries_total = 0     -- 429 retries of every client since start

-- opts: { account_sid, credential (core.vault.Credential), hosts = {api=…},
--         timeout, ca_file, sleep (for tests), random (for tests) }
function M.new(opts)
  assert(type(opts.account_sid) == "string", "account_sid required")
  assert(opts.credential, "credential required")
  return setmetatable({ account_sid = opts.account_sid, credential = opts.credential,
                        hosts = opts.hosts, timeout = opts.timeout or 30, ca_file = opts.ca_file,
                        sleep = opts.sleep or loop.sleep, random = opts.random or math.random,
                        requests = 0, retries = 0 }, M)
end

function M:base(product)
  local h = self.hosts[product]
  if not h then error("no host configured for Twilio product " .. tostring(product), 2) end
  return (h:gsub("/+$", ""))
end

-- The v2010 path of a resource under this account: acct("Messages.json").
function M:acct(rest)
  return ("/%s/Accounts/%s/%s"):format(M.API_VERSION, self.account_sid, rest)
end

local function origin(u)
  return ("%s://%s:%d"):format(u.scheme, u.host, u.port)
end

-- A next-page link (next_page_uri, meta.next_page_url) resolved against the
-- product's host by libcurl's URL parser. Only a link to that same origin
-- (scheme, host, port) without user info is followed: the request carries
-- the credential, which must never go elsewhere. Returns the URL or nil,
-- err (logged).
function M:page_link(product, link)
  local base = self:base(product)
  local b = http.parse(base)
  local u, perr = http.resolve(base .. "/", link)
  if b and u and origin(u) == origin(b) and not u.userinfo then return u.url end
  local where = u and (u.userinfo and "user info in the link" or origin(u)) or perr
  log.warn("twilio: not following a %s page link that leaves %s (%s)", product, b and origin(b) or base, where)
  return nil, { retries = 0, unknown = false, refused_link = true,
                message = ("Twilio's next-page link does not point to the %s host (%s); it was not followed"):format(
                  product, where) }
end

local function twilio_error(res)
  local body = json.decode(json.utf8_repair(res.body or ""))
  local e = { status = res.status }
  if type(body) == "table" then
    e.code = tonumber(body.code)
    e.message = type(body.message) == "string" and body.message or nil
    e.more_info = type(body.more_info) == "string" and body.more_info or nil
    e.details = type(body.details) == "table" and body.details or nil
  end
  e.message = e.message or ("Twilio answered HTTP %d"):format(res.status)
  return e
end

-- The wait before retry n (0-based): Retry-After when given, else full
-- jitter over min(3 s, 100 ms * 2^n).
function M:backoff(n, res)
  local ra = res and res.headers and tonumber(res.headers["retry-after"])
  if ra and ra >= 0 then return ra, true end
  return self.random() * math.min(M.MAX_WAIT, 0.1 * 2 ^ n), false
end

-- One logical request. Returns decoded body (table), response or
-- nil, err where err = { status, code, message, more_info, unknown,
-- rate_limited, retries, transport }.
-- req: { method, product, path | url, query, form }
function M:request(req)
  local method = req.method or "GET"
  local url
  if req.url then
    local lerr
    url, lerr = self:page_link(req.product, req.url)
    if not url then return nil, lerr end
  else
    url = self:base(req.product) .. req.path
  end
  local waited, attempt = 0, 0
  while true do
    self.requests = self.requests + 1
    local res, err, info = http.request({
      method = method, url = url, query = req.query, form = req.form, auth = self.credential,
      headers = { Accept = "application/json" }, timeout = req.timeout or self.timeout,
      ca_file = self.ca_file,
    })
    if not res then
      local sent = info and info.sent
      if method ~= "GET" and sent then
        return nil, { unknown = true, transport = err, retries = attempt,
                      message = "the request went out but no answer came back (" .. err .. ")" }
      end
      return nil, { transport = err, retries = attempt, unknown = false,
                    message = "Twilio could not be reached (" .. err .. ")" }
    end
    if res.status >= 200 and res.status < 300 then
      -- Twilio's answers are JSON objects in UTF-8: bytes that are not
      -- UTF-8 become U+FFFD; anything but an object is no answer
      local body = json.decode(json.utf8_repair(res.body))
      if (body == nil and res.body ~= "") or (body ~= nil and (type(body) ~= "table" or rawget(body, 1) ~= nil)) then
        return nil, { status = res.status, retries = attempt, unknown = method ~= "GET",
                      message = "Twilio answered with a body that is not a JSON object" }
      end
      return body or {}, res, attempt
    end
    local e = twilio_error(res)
    e.retries = attempt
    if res.status >= 500 then
      e.unknown = method ~= "GET"
      return nil, e
    end
    if res.status == 429 and (e.code == nil or e.code == 20429) then
      e.rate_limited = true
      if attempt >= M.MAX_RETRIES then return nil, e end
      local wait, from_header = self:backoff(attempt, res)
      if waited + wait > M.TOTAL_WAIT then
        if from_header then return nil, e end
        wait = math.max(0, M.TOTAL_WAIT - waited)
      end
      waited = waited + wait
      attempt = attempt + 1
      self.retries = self.retries + 1
      M.retries_total = M.retries_total + 1 -- for /metrics
      if wait > 0 then self.sleep(wait) end
      -- the call was given up while it waited (deadline, cancel): the
      -- refused request was not processed, and it is not tried again
      if req.cancelled and req.cancelled() then
        return nil, { cancelled = true, unknown = false, retries = attempt,
                      message = "not sent: the call was cancelled while waiting to retry after a 429" }
      end
    else
      return nil, e
    end
  end
end

function M:get(product, path, query)
  return self:request({ method = "GET", product = product, path = path, query = query })
end

-- opts.cancelled: a predicate checked after each wait, before a retry
function M:post(product, path, form, opts)
  return self:request({ method = "POST", product = product, path = path, form = form,
                        cancelled = opts and opts.cancelled })
end

-- Follow pages until `limit` items were collected (v2010: next_page_uri,
-- v2 products: meta.next_page_url). Returns items, last_body or nil, err.
function M:list(product, path, query, key, limit)
  local items = {}
  local body, err = self:get(product, path, query)
  while true do
    if not body then return nil, err end
    local page = body[key] or (body.meta and body[body.meta.key]) or {}
    for _, item in ipairs(page) do
      if #items >= limit then return items, body end
      items[#items + 1] = item
    end
    if #items >= limit then return items, body end
    local next_url = body.next_page_uri
    if next_url == json.null then next_url = nil end
    if not next_url and type(body.meta) == "table" and type(body.meta.next_page_url) == "string" then
      next_url = body.meta.next_page_url
    end
    if type(next_url) ~= "string" or next_url == "" then return items, body end
    body, err = self:request({ method = "GET", product = product, url = next_url })
  end
end

return M
