-- Shared pieces of the seven Twilio tools (integrations/twilio/tools/): the
-- working rules every agent holding the group reads, Twilio's error codes
-- turned into a plain sentence and what to do next, the outcome of sends
-- for the audit, paging with a filter, and the small conversions (dates,
-- numbers, nulls) that keep results short and honest.
local json = require("switchboard.json")
local time_mod = require("switchboard.time")

local M = {}

M.GROUP = require("integrations.twilio").group

-- Annotations that tell the truth: reads never change anything; sends
-- add (not destroy) and are not idempotent.
M.READ = { readOnlyHint = true, openWorldHint = true }
M.WRITE = { readOnlyHint = false, destructiveHint = false, idempotentHint = false, openWorldHint = true }

---------------------------------------------------------------------------
-- values from Twilio: nulls, numbers as strings, prices

local null = json.null
local tostring, tonumber, type = tostring, tonumber, type
local math_type, floor, tointeger, abs, huge = math.type, math.floor, math.tointeger, math.abs, math.huge

-- nil for JSON null (and for empty strings when asked).
function M.v(x, empty_is_nil)
  if x == null then return nil end
  if empty_is_nil and x == "" then return nil end
  return x
end

-- A string, or nil for null, nil and "".
local function str(x)
  if x == nil or x == null or x == "" then return nil end
  if type(x) ~= "string" then return tostring(x) end
  return x
end
M.str = str

local function num(x)
  if x == nil or x == null or x == "" then return nil end
  local n = tonumber(x)
  if n and (n ~= n or n == huge or n == -huge) then return nil end -- "1e400", "nan"
  if n and math_type(n) == "float" and n == floor(n) and abs(n) < 2 ^ 53 then
    n = tointeger(n)
  end
  return n
end
M.num = num

local function int(x)
  local n = num(x)
  if n == nil then return nil end
  return tointeger(n) or floor(n)
end
M.int = int

function M.bool(x)
  x = M.v(x)
  if x == true or x == "true" then return true end
  if x == false or x == "false" then return false end
  return nil
end

-- Twilio reports charges as negative strings ("-0.0075"): the cost as a
-- positive number.
local function price(x)
  local n = num(x)
  if n == nil then return nil end
  return abs(n)
end
M.price = price

local function truncate(s, n)
  s = str(s)
  if s == nil then return nil end
  -- no more bytes than n: no more characters either
  if #s <= n or (utf8.len(s) or #s) <= n then return s end
  local cut = utf8.offset(s, n) or n
  return s:sub(1, cut - 1) .. "…"
end
M.truncate = truncate

function M.table(x)
  x = M.v(x)
  if type(x) ~= "table" then return nil end
  return x
end

-- A plural: plural(3, "segment") → "3 segments".
function M.plural(n, word, words)
  return ("%d %s"):format(n, n == 1 and word or (words or word .. "s"))
end

-- A copy of t without keys whose value is nil (for audit detail tables).
local function compact(t)
  local out = {}
  for k, v in pairs(t) do if v ~= nil and v ~= json.null then out[k] = v end end
  return out
end
M.compact = compact

---------------------------------------------------------------------------
-- dates: ISO 8601 in, ISO 8601 out; Twilio's RFC 2822 dates converted
-- (switchboard.time does the reading and writing)

M.epoch = time_mod.timegm

-- Parse "YYYY-MM-DD" or an ISO 8601 date-time (offset or Z; none = UTC).
-- Returns seconds since the epoch (UTC) and whether only a date was given.
function M.parse_iso(s)
  local t, is_date = time_mod.parse_iso(s)
  if not t then return nil end
  return t, is_date
end

-- "Fri, 24 May 2019 17:44:46 +0000" → seconds since the epoch.
function M.parse_rfc2822(s)
  if type(s) ~= "string" or s:match("^%d%d%d%d%-") then return nil end
  return (time_mod.parse(s))
end

-- Any Twilio timestamp (RFC 2822 in v2010, ISO 8601 in v2 products) as
-- seconds since the epoch.
function M.parse_time(s)
  s = str(s)
  if not s then return nil end
  return (time_mod.parse(s))
end

local iso = time_mod.iso
M.iso = iso
M.date = time_mod.date
function M.today() return time_mod.date(time_mod.unix()) end
function M.month_start() return time_mod.date(time_mod.month_start(time_mod.unix())) end

-- A Twilio timestamp as ISO 8601 UTC (or as given when it cannot be read).
-- The same times come back page after page (the newest messages, a send
-- and its lookups), so each distinct string is converted once: the last
-- TIME_MEMO_MAX conversions are kept.
local TIME_MEMO_MAX = 2048
local time_memo, time_memo_n = {}, 0

local function convert_time(s)
  local t = time_mod.parse(s)
  return t and iso(t) or s
end

local function time(s)
  s = str(s)
  if not s then return nil end
  local v = time_memo[s]
  if v then return v end
  v = convert_time(s)
  if time_memo_n >= TIME_MEMO_MAX then time_memo, time_memo_n = {}, 0 end
  time_memo[s], time_memo_n = v, time_memo_n + 1
  return v
end
M.time = time

-- A window from ISO arguments: after (from the start of a given date) and
-- before (to the end of a given date, or the instant). Returns a
-- table { after, before } of epochs (either may be nil), or nil, message.
function M.window(after_s, before_s, after_name, before_name)
  local w = {}
  if after_s then
    w.after = M.parse_iso(after_s)
    if not w.after then return nil, ("`%s` must be an ISO 8601 date or date-time"):format(after_name) end
  end
  if before_s then
    local t, date_only = M.parse_iso(before_s)
    if not t then return nil, ("`%s` must be an ISO 8601 date or date-time"):format(before_name) end
    w.before = date_only and t + 86399 or t
  end
  if w.after and w.before and w.after > w.before then
    return nil, ("`%s` (%s) is later than `%s` (%s)"):format(after_name, after_s, before_name, before_s)
  end
  return w
end

-- The window as Twilio filter values (`Key>` and `Key<`), whole UTC days
-- written as date-times the way the SDKs send them: from the start of the
-- first day to the start of the day after the last. Whether Twilio reads
-- the time or only the date, inclusive or not, the range covers the
-- window; M.in_window then keeps the exact instants.
function M.window_query(w, key, q)
  if w.after then q[key .. ">"] = M.iso(w.after - w.after % 86400) end
  if w.before then q[key .. "<"] = M.iso(w.before - w.before % 86400 + 86400) end
  return q
end

-- Does a timestamp (epoch or nil) fall inside the window? Unknown times
-- are kept: Twilio already filtered on its side.
function M.in_window(w, t)
  if not t then return true end
  if w.after and t < w.after then return false end
  if w.before and t > w.before then return false end
  return true
end

---------------------------------------------------------------------------
-- argument rules shared by several tools

M.is_e164 = require("switchboard.schema").is_e164

-- media_url: Twilio fetches it, so it must be a public http(s) URL. It is
-- read by libcurl's URL parser (numeric forms such as 2130706433 or
-- 0x7f.1 come out as 127.0.0.1); an IP literal must be a public address,
-- and names that are local by definition are refused. A name is not
-- resolved here (Twilio resolves it): a public name that points at a
-- private address is only stopped by the allow-list (media_domains).
local LOCAL_NAMES = { localhost = true, ["localhost.localdomain"] = true, ["ip6-localhost"] = true,
                      ["ip6-loopback"] = true }
local LOCAL_SUFFIXES = { "localhost", "local", "localdomain", "internal", "home.arpa", "arpa", "lan" }

local function media_rule(what)
  return ("`media_url` must be a public http(s) URL (got %s)"):format(what)
end

-- The URL to give Twilio (as libcurl wrote it back), or nil, message.
function M.media_url(s)
  if s:find("[%c\\]") then return nil, media_rule("a URL with control characters or backslashes") end
  local u, err = require("core.http").parse(s)
  if not u then return nil, media_rule(err == "unsupported url scheme" and "an unsupported scheme" or "an invalid URL") end
  if u.scheme ~= "http" and u.scheme ~= "https" then return nil, media_rule("a " .. u.scheme .. " URL") end
  if u.userinfo then return nil, media_rule("a user name or password in the URL") end
  local host = u.host:gsub("%.$", "")
  -- "169.254.169.254." is that address to a WHATWG URL parser: classify
  -- the host without its final dot as well
  local ip = u.ip or (host ~= u.host and (require("core.http").parse(u.scheme .. "://" .. host .. "/") or {}).ip)
  if ip then
    if ip ~= "public" then
      return nil, media_rule((ip:match("^[aeiou]") and "an " or "a ") .. ip .. " address")
    end
    return u.url
  end
  if not host:match("^[%w%-%.]+$") then
    return nil, media_rule("a host name with characters other than letters, digits, hyphens and dots;"
      .. " write an international name in its xn-- form")
  end
  if LOCAL_NAMES[host] then return nil, media_rule("a local host name") end
  for _, suffix in ipairs(LOCAL_SUFFIXES) do
    if host:sub(-#suffix - 1) == "." .. suffix then return nil, media_rule("a local host name") end
  end
  if not host:find(".", 1, true) then return nil, media_rule("a single-label host name") end
  return u.url
end

-- With an allow-list (tool_settings.<tool>.media_domains, a list of domain
-- names), the media host must be one of them or a subdomain of one.
-- Returns true or nil, message.
function M.media_allowed(s, domains)
  if type(domains) ~= "table" or #domains == 0 then return true end
  local u = require("core.http").parse(s)
  local host = u and u.host:gsub("%.$", "") or ""
  for _, d in ipairs(domains) do
    d = tostring(d):lower():gsub("^%.", ""):gsub("%.$", "")
    if host == d or host:sub(-#d - 1) == "." .. d then return true end
  end
  return nil, ("`media_url` must be on one of the allowed media domains (%s) (got %s)"):format(
    table.concat(domains, ", "), host ~= "" and host or "no host")
end

-- The allow-list check of a send tool's media_url, as a tool error.
function M.media_check(ctx, args)
  if not args.media_url then return true end
  local domains = ctx.settings.media_domains
  if domains ~= nil and type(domains) ~= "table" then
    -- a misspelt allow-list ("cdn.example.com" for { "cdn.example.com" }) admits nothing
    return nil, { message = ("Not sent: the operator's tool_settings.%s.media_domains is not a list of domain"
      .. " names, so no media_url is accepted."):format(tostring(ctx.tool_name)),
      hint = "Send without media_url, or ask an operator to fix the configuration." }
  end
  local ok, err = M.media_allowed(args.media_url, ctx.settings.media_domains)
  if ok then return true end
  return nil, { message = "Invalid arguments: " .. err .. ".",
                hint = "Use a URL on one of the allowed domains; do not retry unchanged." }
end

-- Percent-encode a path segment (E.164 "+" becomes %2B).
function M.escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

---------------------------------------------------------------------------
-- paging: follow Twilio's links, keep items that pass `keep`, stop at
-- `limit` or after `max_pages` pages. Returns items, more (boolean:
-- Twilio has more beyond what was returned) or nil, err.

function M.collect(client, product, path, query, key, limit, keep, max_pages)
  max_pages = max_pages or 20
  local items, pages = {}, 0
  local body, err = client:get(product, path, query)
  while true do
    if not body then return nil, err end
    pages = pages + 1
    local page = body[key]
    if type(page) ~= "table" and type(body.meta) == "table" and type(body.meta.key) == "string" then
      page = body[body.meta.key]
    end
    if type(page) ~= "table" then page = {} end
    for _, item in ipairs(page) do
      if type(item) == "table" and (not keep or keep(item)) then
        if #items >= limit then return items, true end
        items[#items + 1] = item
      end
    end
    local nxt = M.v(body.next_page_uri)
    if type(nxt) ~= "string" and type(body.meta) == "table" then nxt = M.v(body.meta.next_page_url) end
    if type(nxt) ~= "string" or nxt == "" then return items, false end
    if #items >= limit or pages >= max_pages then return items, true end
    body, err = client:request({ method = "GET", product = product, url = nxt })
  end
end

---------------------------------------------------------------------------
-- history listings (messages, calls): newest first, within a window the
-- arguments give. A listing is described once:
--   { path = "Messages.json", key = "messages",      the account's resource
--     after = "date_sent_after", before = "date_sent_before",  argument names
--     param = "DateSent", field = "date_sent" }      Twilio's filter, item time

-- The window of a listing's arguments (M.window): w, or nil, message.
function M.args_window(args, listing)
  return M.window(args[listing.after], args[listing.before], listing.after, listing.before)
end

-- At most args.limit items of the listing that match `filters` (Twilio
-- query parameters) and the window. Returns items, more or nil, err (as
-- M.collect).
function M.list_window(ctx, args, listing, filters)
  local c = ctx.twilio
  local w = assert(M.args_window(args, listing))
  -- Twilio filters by whole UTC days; the exact instants are kept here
  local q = M.window_query(w, listing.param, filters)
  local keep
  if w.after or w.before then
    keep = function(m) return M.in_window(w, M.parse_time(m[listing.field]) or M.parse_time(m.date_created)) end
  end
  -- one page holds the whole limit, or 100 when the exact window is kept here;
  -- tool_settings.<tool>.page_size makes pages smaller
  q.PageSize = math.min(tonumber(ctx.settings.page_size) or 1000, keep and 100 or args.limit)
  return M.collect(c, "api", c:acct(listing.path), q, listing.key, args.limit, keep)
end

---------------------------------------------------------------------------
-- Twilio's error codes: what happened, and what the agent should do

-- code → { sentence, hint }
M.CODES = {
  [20003] = { "Twilio refused the tenant's credentials (authentication failed or access denied).",
              "Do not retry: an operator must check the connection with `switchboard admin twilio test`." },
  [20404] = { "Twilio has no such resource.",
              "Check the identifier: it may be mistyped, belong to another account, or have been deleted." },
  [20429] = { "Twilio is rate-limiting this account (too many concurrent requests).",
              "Wait a minute before trying again, and make fewer calls at once." },
  [21211] = { "The 'to' number is not a valid phone number.",
              "Check the number and give it in E.164 form (+14155550123); twilio_lookup_phone can validate it." },
  [21408] = { "Sending to this country is not enabled on the account (Messaging Geo Permissions).",
              "Do not retry; an operator can enable the country in the Twilio Console." },
  [21606] = { "The sending number cannot send this message (not SMS-capable or not on this account).",
              "Do not retry; an operator must set a working default number." },
  [21608] = { "This is a trial account and the recipient is not one of its verified numbers.",
              "Do not retry; an operator must verify the recipient or upgrade the account." },
  [21610] = { "The recipient has opted out of messages from this number (they replied STOP).",
              "Do not retry and do not message this number again; only the recipient can opt back in"
                .. " by texting START." },
  [21612] = { "Twilio cannot route a message between these two numbers.",
              "Do not retry unchanged; check the recipient with twilio_lookup_phone." },
  [21614] = { "The recipient is not a mobile number that can receive SMS.",
              "Do not retry to this number; check its line type with twilio_lookup_phone." },
  [21617] = { "The message body is longer than 1,600 characters.", "Shorten the body and send it once." },
  [21635] = { "The recipient is a landline and cannot receive SMS.",
              "Do not retry; reach the person another way." },
  [30003] = { "The recipient's handset was unreachable (switched off or out of coverage).",
              "Do not resend right away; try later or reach the person another way." },
  [30004] = { "The message was blocked (the recipient blocked it or the carrier refused it).",
              "Do not resend to this number." },
  [30005] = { "The recipient's number is unknown to the carrier (it may no longer exist).",
              "Do not resend; check the number with twilio_lookup_phone." },
  [30006] = { "The recipient is a landline or a carrier that cannot receive messages.",
              "Do not resend; reach the person another way." },
  [30007] = { "The carrier filtered the message (spam or content rules).",
              "Do not resend the same text; an operator should review the content and sender registration." },
  [30008] = { "The message failed for an unknown reason at the carrier.", "Do not resend in a loop; try once later." },
  [30450] = { "Twilio's SMS pumping protection blocked this destination for a while.",
              "Do not retry now; an operator can review SMS pumping protection in the Twilio Console." },
  [63007] = { "No WhatsApp sender is set up for the configured WhatsApp number.",
              "Do not retry; an operator must register the WhatsApp sender in the Twilio Console." },
  [63014] = { "The recipient has blocked this business on WhatsApp.", "Do not message this recipient again on WhatsApp." },
  [63016] = { "WhatsApp refused the free-form message: it is outside the 24-hour window (the recipient has not"
                .. " written to this business in the last 24 hours).",
              "Use an approved template instead: call twilio_send_whatsapp with template_sid (and"
                .. " template_variables) rather than body." },
  [63021] = { "WhatsApp rejected the content (invalid, or a template over 1,024 characters).",
              "Fix the content or the template variables; do not resend unchanged." },
  [60200] = { "Twilio Verify refused a parameter as invalid.",
              "Check `to` (E.164 or an email address) and the channel, then try once more." },
  [60202] = { "The attempt limit was reached: this verification had the maximum number of check attempts (5).",
              "Do not check this code again. Wait 10 minutes, then send a new code with action send_code." },
  [60203] = { "The attempt limit was reached: the maximum number of codes (5 within 10 minutes) was sent to"
                .. " this destination.",
              "Do not send another code now; wait at least 10 minutes and make sure the destination is right." },
  [60205] = { "Verification codes cannot be sent by SMS to a landline.",
              "Send the code with channel \"call\" instead." },
  [60212] = { "Too many concurrent verifications to this destination.",
              "Wait a few minutes before sending another code; never send codes in a loop." },
  [60410] = { "Twilio Verify's Fraud Guard blocked this destination prefix for 12 hours.",
              "Do not retry; an operator can review Fraud Guard in the Twilio Console." },
  [60605] = { "Verification to this country is not enabled (Verify Geo Permissions).",
              "Do not retry; an operator can enable the country in the Twilio Console." },
  [60600] = { "The lookup could not be completed for this number.", "Do not retry unchanged." },
  [60601] = { "This lookup needs Twilio's approval for this country.", "Ask an operator; do not retry." },
  [60606] = { "This lookup package is not enabled on the account.",
              "An operator must enable the package in the Twilio Console; do not request it again." },
  [60607] = { "This lookup package does not cover the number's country.", "Do not request it for this number." },
  [60610] = { "There is no coverage for this number in this lookup package.", "Do not request it for this number." },
  [60612] = { "This lookup package works only for mobile numbers.", "Do not request it for this number." },
  [60614] = { "This lookup package is not available in the account's region.", "Do not request it again." },
  [60619] = { "This lookup package is not available in the account's region.", "Do not request it again." },
}

-- A sentence for a Twilio error code (for a message's error_code).
function M.explain(code)
  code = M.int(code)
  if not code then return nil end
  local c = M.CODES[code]
  return c and c[1] or ("Twilio error %d."):format(code)
end

function M.hint_for(code)
  local c = M.CODES[M.int(code) or -1]
  return c and c[2] or nil
end

-- A client error (from integrations.twilio.client) as a tool error:
-- { message, code, hint, more_info, data }. `over` may replace message or
-- hint per code: over[code] = { message = …, hint = … }, over.default.
function M.failure(err, over)
  over = over or {}
  local e = { code = M.int(err.code), more_info = err.more_info,
              data = compact({ http_status = err.status, twilio_message = err.message,
                               retries = err.retries and err.retries > 0 and err.retries or nil }) }
  local o = (err.code and over[err.code]) or (err.status and over[err.status]) or nil
  if err.rate_limited then
    local tries = (err.retries or 0) + 1
    e.code = M.int(err.code) or 20429
    e.message = ("Twilio is rate-limiting this account (too many concurrent requests); the request was tried"
      .. " %s and refused each time."):format(M.plural(tries, "time"))
    e.hint = M.CODES[20429][2]
    e.data.rate_limited = true
  elseif err.refused_link then
    e.message = err.message .. "."
    e.hint = "Do not retry; tell an operator (the server's log names the link's host)."
  elseif not err.status and err.transport then
    e.message = ("Twilio could not be reached: %s."):format(err.transport)
    e.hint = "Try again in a little while; if it keeps failing, tell an operator."
  elseif not err.status then
    local msg = tostring(err.message or "the request failed before reaching Twilio")
    e.message = msg:sub(1, 1):upper() .. msg:sub(2) .. (msg:find("[%.!]$") and "" or ".")
    e.hint = "Try again in a little while; if it keeps failing, tell an operator."
  elseif err.status >= 500 then
    e.message = ("Twilio had an internal error (HTTP %d)."):format(err.status)
    e.hint = "Try again in a few minutes."
  elseif err.code and M.CODES[err.code] then
    e.message, e.hint = M.CODES[err.code][1], M.CODES[err.code][2]
  elseif err.status == 401 or err.status == 403 then
    e.message = ("Twilio refused access (HTTP %d): %s"):format(err.status, err.message or "")
    e.hint = M.CODES[20003][2]
  elseif err.status == 404 then
    e.message, e.hint = M.CODES[20404][1], M.CODES[20404][2]
  else
    e.message = "Twilio refused the request: " .. tostring(err.message or ("HTTP " .. err.status))
    e.hint = "Check the arguments; do not retry unchanged."
  end
  if o then
    e.message = o.message or e.message
    e.hint = o.hint or e.hint
  end
  return e
end

-- Send through ctx.send (the pipeline's write-ahead send): the request
-- kept sealed for reconciliation, a status callback when receipts are on
-- (message sends), an opt-out (21610) marked as one. opts: { text (what is
-- matched at reconciliation), hash }. Returns body or nil, err.
function M.send(ctx, product, path, form, opts)
  opts = opts or {}
  local c = ctx.twilio
  return ctx.send({
    request = { product = product, path = path, form = form },
    text = opts.text, hash = opts.hash, ref = "sid",
    callback = path:find("/Messages.json", 1, true) ~= nil,
    post = function(info)
      local f = form
      if info.callback_url then
        f = {}
        for k, v in pairs(form) do f[k] = v end
        f.StatusCallback = info.callback_url
      end
      local body, err = c:post(product, path, f, { cancelled = ctx.cancelled })
      if err and err.code == 21610 then err.opted_out = true end
      return body, err
    end,
  })
end

-- How a send ended, for the audit (a result's or an error's `audit`).
function M.audit(outcome, detail)
  detail.outcome = outcome
  return compact(detail)
end

-- A write that failed: explain it, with the outcome and the audit's detail
-- on the error. A request that went out without an answer has an unknown
-- outcome and must not be resent. what: "message" or "code"; check_hint:
-- where to look.
function M.send_failure(err, what, check_hint, detail, over)
  detail = detail or {}
  if err.unknown then
    detail.error = err.transport or err.message
    local e = { message = ("The outcome is unknown: the request reached Twilio but no answer came back (%s)."
                  .. " The %s may have been sent."):format(err.transport or err.message or "no answer", what),
                hint = "Do not resend. " .. check_hint,
                code = M.int(err.code), more_info = err.more_info,
                data = compact({ outcome = "unknown", http_status = err.status }),
                outcome = "unknown", audit = M.audit("unknown", detail) }
    return e
  end
  if err.not_sent then
    -- the pipeline's send did not go out (cancelled, storage): its own account stands
    local e = M.failure(err, over)
    e.data.outcome = "failed"
    return e
  end
  local e = M.failure(err, over)
  detail.error_code = M.int(err.code)
  detail.http_status = err.status
  detail.error = err.message
  e.outcome, e.audit = "failed", M.audit("failed", detail)
  e.data.outcome = "failed"
  return e
end

-- Configuration missing on the tenant's connection (before any request).
function M.not_configured(message, hint)
  return { message = message, hint = hint, data = { outcome = "failed", not_configured = true },
           outcome = "failed", audit = { error = message } }
end

---------------------------------------------------------------------------
-- messages (shared by the send tools and search)

function M.message_view(m, full)
  local code = int(m.error_code)
  local out = {
    sid = str(m.sid), status = str(m.status), direction = str(m.direction),
    to = str(m.to), from = str(m.from),
    date_created = time(m.date_created), date_sent = time(m.date_sent),
    num_media = int(m.num_media), segments = int(m.num_segments),
    price = price(m.price), price_unit = str(m.price_unit),
    error_code = code,
  }
  if full then
    out.body = str(m.body)
    out.date_updated = time(m.date_updated)
    out.error_message = str(m.error_message)
    out.messaging_service_sid = str(m.messaging_service_sid)
  else
    out.body = truncate(m.body, 160)
  end
  if code then out.error_explanation = M.explain(code) end
  return out
end

-- JSON Schema (our subset) of message_view.
function M.message_schema(full)
  local p = {
    sid = { type = "string" }, status = { type = "string" }, direction = { type = "string" },
    to = { type = "string" }, from = { type = "string" }, body = { type = "string" },
    date_created = { type = "string" }, date_sent = { type = "string" },
    num_media = { type = "integer" }, segments = { type = "integer" },
    price = { type = "number" }, price_unit = { type = "string" },
    error_code = { type = "integer" }, error_explanation = { type = "string" },
  }
  if full then
    p.date_updated = { type = "string" }
    p.error_message = { type = "string" }
    p.messaging_service_sid = { type = "string" }
  end
  return { type = "object", properties = p }
end

M.FAILED = { failed = true, undelivered = true, canceled = true }

return M
