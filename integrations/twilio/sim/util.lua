-- Simulator helpers: URL and form coding, Basic auth, dates (RFC 2822 for
-- v2010, ISO 8601 for v2/v1), SMS segment counting, SIDs, Twilio error
-- bodies and JSON responses.
local json = require("switchboard.json")
local time = require("switchboard.time")

local form = require("switchboard.form")
local M = {}

local byte, char, format = string.byte, string.char, string.format

M.null = json.null

-- Percent-decode; form = true also turns '+' into a space.
M.unescape = form.unescape

-- Percent-encode everything but the unreserved characters.
function M.escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end

-- Decode an application/x-www-form-urlencoded string (also a query).
M.parse_form = form.parse

-- Paging parameters as Twilio reads them: PageSize a whole number from 1
-- to 1000 written in digits (default 50; "5.0", "abc", 0 and 1001 are
-- refused), Page a whole number from 0. nil when invalid.
local function digits(v, default)
  if v == nil then return default end
  if type(v) ~= "string" or not v:match("^%d+$") or #v > 9 then return nil end
  return math.tointeger(tonumber(v))
end

function M.page_size(params)
  local n = digits(M.one(params.PageSize), 50)
  if not n or n < 1 or n > 1000 then return nil end
  return n
end

function M.page_number(params)
  return digits(M.one(params.Page), 0)
end

-- Every value of a parameter as an array.
function M.list(v)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  return { v }
end

-- The first value of a parameter (a repeated one counts as its first).
function M.one(v)
  if type(v) == "table" then return v[1] end
  return v
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_INDEX = {}
for i = 1, #B64 do B64_INDEX[B64:sub(i, i)] = i - 1 end

function M.b64decode(s)
  s = s:gsub("%s", ""):gsub("=+$", "")
  local out, bits, n = {}, 0, 0
  for i = 1, #s do
    local v = B64_INDEX[s:sub(i, i)]
    if v == nil then return nil end
    bits = (bits << 6) | v
    n = n + 6
    if n >= 8 then
      n = n - 8
      out[#out + 1] = char((bits >> n) & 0xFF)
      bits = bits & ((1 << n) - 1)
    end
  end
  return table.concat(out)
end

-- user, password from an "Authorization: Basic …" header, or nil.
function M.basic_auth(header)
  if type(header) ~= "string" then return nil end
  local b64 = header:match("^[Bb]asic%s+(%S+)%s*$")
  if not b64 then return nil end
  local raw = M.b64decode(b64)
  if not raw then return nil end
  local user, pass = raw:match("^([^:]*):(.*)$")
  return user, pass
end

-- {======================================================================
-- Dates. Times are integer seconds since the epoch (UTC).

M.timegm = time.timegm

-- Parse "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM[:SS[.fff]][Z|±HH:MM]"; returns the
-- time and whether a time of day was given, or nil.
function M.parse_time(s)
  local t, is_date = time.parse_iso(s)
  if not t then return nil end
  return t, not is_date
end

-- "Thu, 24 Aug 2023 05:01:45 +0000" (v2010), independent of the locale.
function M.rfc2822(t)
  if t == nil then return json.null end
  return time.rfc2822(t)
end

-- "2015-07-30T20:00:00Z" (Verify, Content).
function M.iso(t)
  if t == nil then return json.null end
  return time.iso(t)
end

-- "2019-06-24T22:32:49+00:00" (usage as_of).
function M.iso_offset(t)
  return time.iso(t):sub(1, -2) .. "+00:00"
end

M.ymd = time.date
M.day_start = time.midnight
M.month_start = time.month_start

-- }======================================================================

-- {======================================================================
-- SMS segments: GSM-7 (160 per single part, 153 per part) or UCS-2
-- (70 / 67 UTF-16 code units).

local GSM_BASIC = {}
local GSM_EXT = {}
do
  local basic = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    .. "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
  for _, c in utf8.codes(basic) do GSM_BASIC[c] = true end
  for _, c in utf8.codes("^{}\\[~]|€\f") do GSM_EXT[c] = true end
end

-- Number of segments, the encoding ("GSM-7" or "UCS-2") and the length in
-- that encoding's units.
function M.segments(body)
  body = body or ""
  local ok, n = pcall(utf8.len, body)
  if not ok or not n then
    return math.max(1, math.ceil(#body / 67)), "UCS-2", #body
  end
  local gsm, units16 = 0, 0
  local is_gsm = true
  for _, c in utf8.codes(body) do
    if GSM_BASIC[c] then
      gsm = gsm + 1
    elseif GSM_EXT[c] then
      gsm = gsm + 2
    else
      is_gsm = false
    end
    units16 = units16 + (c > 0xFFFF and 2 or 1)
  end
  if is_gsm then
    if gsm <= 160 then return 1, "GSM-7", gsm end
    return math.ceil(gsm / 153), "GSM-7", gsm
  end
  if units16 <= 70 then return 1, "UCS-2", units16 end
  return math.ceil(units16 / 67), "UCS-2", units16
end

-- Characters as Twilio counts them for the 1600 limit (code points).
function M.chars(body)
  local ok, n = pcall(utf8.len, body or "")
  if ok and n then return n end
  return #body
end

-- }======================================================================

-- A new SID: prefix .. 32 lowercase hex digits.
local rand_ok, vault = pcall(require, "core.vault")
function M.sid(prefix)
  if rand_ok and vault.random then
    return prefix .. vault.hex(vault.random(16))
  end
  local t = {}
  for i = 1, 32 do t[i] = format("%x", math.random(0, 15)) end
  return prefix .. table.concat(t)
end

-- A random numeric code of n digits.
function M.digits(n)
  local t = {}
  if rand_ok and vault.random then
    local b = vault.random(n)
    for i = 1, n do t[i] = tostring(byte(b, i) % 10) end
  else
    for i = 1, n do t[i] = tostring(math.random(0, 9)) end
  end
  return table.concat(t)
end

function M.is_e164(s)
  return type(s) == "string" and s:match("^%+[1-9]%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$") ~= nil
end

function M.is_email(s)
  return type(s) == "string" and s:match("^[^@%s]+@[^@%s]+%.[^@%s]+$") ~= nil
end

-- {======================================================================
-- Responses

local JSON_HEADERS = "application/json; charset=utf-8"

local request_counter = 0

function M.headers(extra)
  request_counter = request_counter + 1
  local h = {
    ["Content-Type"] = JSON_HEADERS,
    ["Twilio-Request-Id"] = M.sid("RQ"),
    ["Twilio-Concurrent-Requests"] = "1",
    ["Twilio-Request-Duration"] = "0.004",
  }
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

function M.json(status, value, extra_headers)
  return status, M.headers(extra_headers), json.encode(value)
end

-- The Twilio error body {code, message, more_info, status}.
function M.error(status, code, message, extra_headers)
  return M.json(status, {
    code = code,
    message = message,
    more_info = "https://www.twilio.com/docs/errors/" .. tostring(code),
    status = status,
  }, extra_headers)
end

function M.not_found(path)
  return M.error(404, 20404, ("The requested resource %s was not found"):format(path))
end

function M.auth_failed()
  return M.error(401, 20003, "Authenticate", { ["WWW-Authenticate"] = 'Basic realm="Twilio API"' })
end

-- A deep copy (fixture data must not be shared with the mutable state).
function M.copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = M.copy(x) end
  return setmetatable(t, getmetatable(v))
end

return M
