-- The simulator's api.twilio.com (/2010-04-01): accounts, balance,
-- messages and media, calls and recordings, incoming phone numbers, usage
-- records. Shapes follow twilio_api_v2010.json; lists page like Twilio
-- (next_page_uri holds Page and PageToken, newest first).
local json = require("switchboard.json")
local U = require("integrations.twilio.sim.util")
local S = require("integrations.twilio.sim.state")
local lookups = require("integrations.twilio.sim.lookups")
local callbacks = require("integrations.twilio.sim.callbacks")

local M = {}

local null = json.null
local API = "/2010-04-01"

local function nn(v)
  if v == nil then return null end
  return v
end

-- {======================================================================
-- Paging

-- The query string of a list URI: the filters given (in the order listed
-- in `names`), then PageSize, Page and PageToken.
local function list_query(params, names, size, page, token)
  local parts = {}
  for _, k in ipairs(names) do
    for _, v in ipairs(U.list(params[k])) do
      parts[#parts + 1] = U.escape(k) .. "=" .. U.escape(v)
    end
  end
  parts[#parts + 1] = "PageSize=" .. size
  parts[#parts + 1] = "Page=" .. page
  if token then parts[#parts + 1] = "PageToken=" .. U.escape(token) end
  return table.concat(parts, "&")
end

-- One page of items (already filtered and sorted), with Twilio's paging
-- fields; id(item) names an item in page tokens. Returns the response
-- table or nil, err.
function M.page(params, items, base, names, key, id, render)
  local size = U.page_size(params)
  if not size then return nil, "PageSize" end
  local page = U.page_number(params)
  if not page then return nil, "Page" end
  local token = U.one(params.PageToken)
  local start = page * size
  if token and token ~= "" then
    local dir, ref = token:match("^P([AB])(.+)$")
    local at
    for i, it in ipairs(items) do
      if id(it) == ref then at = i break end
    end
    if at and dir == "A" then
      start = at
    elseif at then
      start = math.max(0, at - 1 - size)
    end
  end
  local slice = {}
  for i = start + 1, math.min(#items, start + size) do
    slice[#slice + 1] = render(items[i])
  end
  local out = {
    [key] = json.array(slice),
    page = page,
    page_size = size,
    start = page * size,
    ["end"] = page * size + math.max(#slice - 1, 0),
    uri = base .. "?" .. list_query(params, names, size, page, token ~= "" and token or nil),
    first_page_uri = base .. "?" .. list_query(params, names, size, 0),
    next_page_uri = null,
    previous_page_uri = null,
  }
  if start + size < #items and #slice > 0 then
    out.next_page_uri = base .. "?" .. list_query(params, names, size, page + 1, "PA" .. id(items[start + size]))
  end
  if page > 0 and start > 0 then
    local first = items[start + 1] or items[#items]
    out.previous_page_uri = base .. "?" .. list_query(params, names, size, page - 1, "PB" .. id(first))
  end
  return out
end

local function sid_of(x) return x.sid end

local function newest_first(a, b)
  if a.date_created ~= b.date_created then return a.date_created > b.date_created end
  return a.seq > b.seq
end

local function bad_param(name, value)
  return U.error(400, 20001, ("Invalid parameter %s: %s"):format(name, tostring(value)))
end

-- Date filters NAME, NAME< (on or before) and NAME> (on or after): each a
-- date "YYYY-MM-DD" (whole GMT days) or a date-time. Returns a predicate
-- on times, or nil, bad_param_name.
local function date_filter(params, name)
  local tests = {}
  for _, suffix in ipairs({ "", "<", ">" }) do
    local v = U.one(params[name .. suffix])
    if v and v ~= "" then
      local t, has_time = U.parse_time(v)
      if not t then return nil, name .. suffix, v end
      local lo, hi = t, has_time and t or t + 86399
      if suffix == "" then
        tests[#tests + 1] = function(x) return x >= lo and x <= hi end
      elseif suffix == "<" then
        tests[#tests + 1] = function(x) return x <= hi end
      else
        tests[#tests + 1] = function(x) return x >= lo end
      end
    end
  end
  return function(x)
    if #tests == 0 then return true end
    if x == nil then return false end
    for _, f in ipairs(tests) do
      if not f(x) then return false end
    end
    return true
  end
end

-- }======================================================================

-- {======================================================================
-- Accounts and balance

local function account_json(acct)
  local base = API .. "/Accounts/" .. acct.sid
  local subs = {}
  for _, name in ipairs({ "calls", "messages", "incoming_phone_numbers", "recordings", "usage", "balance", "keys",
                          "notifications", "outgoing_caller_ids", "addresses", "applications", "queues", "sip",
                          "transcriptions", "conferences", "connect_apps", "authorized_connect_apps",
                          "available_phone_numbers", "signing_keys" }) do
    local seg = ({ calls = "Calls", messages = "Messages", incoming_phone_numbers = "IncomingPhoneNumbers",
                   recordings = "Recordings", usage = "Usage", balance = "Balance", keys = "Keys",
                   notifications = "Notifications", outgoing_caller_ids = "OutgoingCallerIds",
                   addresses = "Addresses", applications = "Applications", queues = "Queues", sip = "SIP",
                   transcriptions = "Transcriptions", conferences = "Conferences", connect_apps = "ConnectApps",
                   authorized_connect_apps = "AuthorizedConnectApps",
                   available_phone_numbers = "AvailablePhoneNumbers", signing_keys = "SigningKeys" })[name]
    subs[name] = base .. "/" .. seg .. ".json"
  end
  subs.short_codes = base .. "/SMS/ShortCodes.json"
  return {
    auth_token = acct.auth_token,
    date_created = U.rfc2822(acct.date_created),
    date_updated = U.rfc2822(acct.date_created),
    friendly_name = acct.friendly_name,
    owner_account_sid = acct.owner_account_sid,
    sid = acct.sid,
    status = acct.status,
    subresource_uris = subs,
    type = acct.type,
    uri = base .. ".json",
  }
end

-- }======================================================================

-- {======================================================================
-- Messages and media

local function media_json(acct, msg, md)
  return {
    account_sid = acct.sid,
    content_type = md.content_type,
    date_created = U.rfc2822(md.date_created),
    date_updated = U.rfc2822(md.date_created),
    parent_sid = msg.sid,
    sid = md.sid,
    uri = ("%s/Accounts/%s/Messages/%s/Media/%s.json"):format(API, acct.sid, msg.sid, md.sid),
  }
end

-- A queued message reaches its final status once its time has come.
local function settle(st, msg)
  local fin = msg.final
  if fin and S.now(st) >= msg.settle_at then
    msg.final = nil
    msg.status = fin.status
    msg.error_code = fin.error_code
    msg.error_message = fin.error_message
    msg.price = fin.price
    msg.date_sent = msg.settle_at
    msg.date_updated = msg.settle_at
  end
  return msg
end
M.settle = settle

function M.message_json(st, acct, msg)
  settle(st, msg)
  local base = ("%s/Accounts/%s/Messages/%s"):format(API, acct.sid, msg.sid)
  return {
    account_sid = acct.sid,
    api_version = "2010-04-01",
    body = msg.body,
    date_created = U.rfc2822(msg.date_created),
    date_sent = U.rfc2822(msg.date_sent),
    date_updated = U.rfc2822(msg.date_updated),
    direction = msg.direction,
    error_code = nn(msg.error_code),
    error_message = nn(msg.error_message),
    from = nn(msg.from),
    messaging_service_sid = nn(msg.messaging_service_sid),
    num_media = tostring(#msg.media),
    num_segments = tostring(msg.num_segments),
    price = nn(msg.price),
    price_unit = msg.price_unit,
    sid = msg.sid,
    status = msg.status,
    subresource_uris = { media = base .. "/Media.json", feedback = base .. "/Feedback.json" },
    to = msg.to,
    uri = base .. ".json",
  }
end

local MEDIA_TYPES = { jpg = "image/jpeg", jpeg = "image/jpeg", png = "image/png", gif = "image/gif",
                      pdf = "application/pdf", mp4 = "video/mp4", mp3 = "audio/mpeg", vcf = "text/vcard" }

local function render_template(text, vars)
  return (text:gsub("{{%s*([%w_]+)%s*}}", function(k)
    local v = vars[k]
    if v == nil then return nil end
    return tostring(v)
  end))
end

local function find_number(acct, number)
  for _, n in ipairs(acct.numbers) do
    if n.phone_number == number then return n end
  end
end

local function create_message(st, acct, form)
  local to = U.one(form.To)
  local from = U.one(form.From)
  local msid = U.one(form.MessagingServiceSid)
  local body = U.one(form.Body)
  local media_urls = U.list(form.MediaUrl)
  local content_sid = U.one(form.ContentSid)
  local content_vars = U.one(form.ContentVariables)
  if from == "" then from = nil end
  if msid == "" then msid = nil end
  if body == "" then body = nil end
  if content_sid == "" then content_sid = nil end

  if not to or to == "" then
    return U.error(400, 21604, "A 'To' phone number is required.")
  end
  if not from and not msid then
    return U.error(400, 21603, "A 'From' phone number is required.")
  end
  local whatsapp = to:match("^whatsapp:") ~= nil
  local to_number = to:gsub("^whatsapp:", "")
  if not lookups.is_valid(st, to_number) then
    return U.error(400, 21211, ("Invalid 'To' Phone Number: %s"):format(to))
  end
  local service
  if msid then
    service = acct.messaging_services[msid]
    if not service then
      return U.error(400, 21705, ("The Messaging Service Sid %s is invalid."):format(msid))
    end
    if not from then
      if whatsapp then
        from = next(acct.whatsapp_senders)
      else
        from = service.from
      end
    end
  end
  if whatsapp then
    if not (from and from:match("^whatsapp:")) then
      return U.error(400, 21910, "Invalid From and To pair. From and To should be of the same channel")
    end
    if not acct.whatsapp_senders[from] then
      return U.error(400, 63007, ("Twilio could not find a Channel with the specified From address: %s"):format(from))
    end
  else
    if from and from:match("^whatsapp:") then
      return U.error(400, 21910, "Invalid From and To pair. From and To should be of the same channel")
    end
    local n = from and find_number(acct, from)
    if not (n and n.capabilities.sms) then
      return U.error(400, 21606, ("The From phone number %s is not a valid, SMS-capable inbound phone number or "
        .. "short code for your account."):format(tostring(from)))
    end
  end
  if not body and #media_urls == 0 and not content_sid then
    return U.error(400, 21602, "Message body is required.")
  end
  if body and U.chars(body) > 1600 then
    return U.error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
  end
  if #media_urls > 10 then
    return U.error(400, 21623, "Number of media files exceeds allowed limit of 10.")
  end
  for _, url in ipairs(media_urls) do
    if not url:match("^https?://[^%s]+$") then
      return U.error(400, 21620, ("Invalid media URL(s): %s"):format(url))
    end
  end
  if content_sid then
    local c = content_sid:match("^HX%x+$") and #content_sid == 34 and st.contents[content_sid]
    if not c or c.account ~= acct.sid then
      return U.error(400, 21655, ("The Content SID %s is invalid."):format(content_sid))
    end
    local vars = {}
    if content_vars and content_vars ~= "" then
      local v = json.decode(content_vars)
      if type(v) ~= "table" then
        return U.error(400, 21656, "The Content Variables parameter is invalid.")
      end
      vars = v
    end
    local text = c.types and c.types["twilio/text"] and c.types["twilio/text"].body
    if text and not body then body = render_template(text, vars) end
  end
  if st.opted_out[to_number] then
    return U.error(400, 21610, "Attempt to send to unsubscribed recipient")
  end

  local now = S.now(st)
  local segments = whatsapp and 1 or (U.segments(body or ""))
  local msg = {
    seq = S.next_seq(st),
    sid = U.sid((#media_urls > 0 and not whatsapp) and "MM" or "SM"),
    account_sid = acct.sid,
    direction = "outbound-api",
    from = from,
    to = to,
    body = body or "",
    status = "queued",
    date_created = now,
    date_updated = now,
    date_sent = nil,
    price = nil,
    price_unit = "USD",
    messaging_service_sid = msid,
    num_segments = segments,
    media = {},
    content_sid = content_sid,
    status_callback = U.one(form.StatusCallback),
    settle_at = now + (tonumber(st.settings.delivery_seconds) or 0),
  }
  for _, url in ipairs(media_urls) do
    local ext = url:match("%.(%w+)$") or url:match("%.(%w+)%?")
    msg.media[#msg.media + 1] = { sid = U.sid("ME"), content_type = MEDIA_TYPES[(ext or ""):lower()] or "image/jpeg",
      data = "simulated media from " .. url, date_created = now, url = url }
  end
  if whatsapp and not content_sid and not st.whatsapp_window[to_number] then
    msg.final = { status = "failed", error_code = 63016, price = "0.00000",
      error_message = "Failed to send freeform message because you are outside the allowed window. "
        .. "If you are using WhatsApp, please use a Message Template." }
  elseif whatsapp then
    msg.final = { status = "delivered", price = "-0.00500" }
  else
    msg.final = { status = "delivered",
      price = ("%.5f"):format(-(#msg.media > 0 and 0.02 or 0.0079 * segments)) }
  end
  acct.messages[#acct.messages + 1] = msg
  acct.msg_by_sid[msg.sid] = msg
  st.created[#st.created + 1] = { account = acct, msg = msg }
  callbacks.schedule(st, msg)
  if msg.settle_at <= now then settle(st, msg) end
  return U.json(201, M.message_json(st, acct, msg))
end

local function list_messages(st, acct, params, base)
  local to, from = U.one(params.To), U.one(params.From)
  local sent, bad, v = date_filter(params, "DateSent")
  if not sent then return bad_param(bad, v) end
  local items = {}
  for _, m in ipairs(acct.messages) do
    settle(st, m)
    if (not to or m.to == to) and (not from or m.from == from) and sent(m.date_sent or m.date_created) then
      items[#items + 1] = m
    end
  end
  table.sort(items, newest_first)
  local out, err = M.page(params, items, base, { "To", "From", "DateSent", "DateSent<", "DateSent>" }, "messages",
    sid_of, function(m) return M.message_json(st, acct, m) end)
  if not out then return bad_param(err, U.one(params[err])) end
  return U.json(200, out)
end

local function list_media(acct, msg, params, base)
  local created, bad, v = date_filter(params, "DateCreated")
  if not created then return bad_param(bad, v) end
  local items = {}
  for _, md in ipairs(msg.media) do
    if created(md.date_created) then items[#items + 1] = md end
  end
  local out, err = M.page(params, items, base, { "DateCreated", "DateCreated<", "DateCreated>" }, "media_list",
    sid_of, function(md) return media_json(acct, msg, md) end)
  if not out then return bad_param(err, U.one(params[err])) end
  return U.json(200, out)
end

-- }======================================================================

-- {======================================================================
-- Calls and recordings

local function formatted(number)
  local a, b, c = tostring(number):match("^%+1(%d%d%d)(%d%d%d)(%d%d%d%d)$")
  if a then return ("(%s) %s-%s"):format(a, b, c) end
  return nn(number)
end

local function call_json(acct, c)
  local base = ("%s/Accounts/%s/Calls/%s"):format(API, acct.sid, c.sid)
  local own = find_number(acct, c.direction == "inbound" and c.to or c.from)
  return {
    account_sid = acct.sid,
    annotation = null,
    answered_by = nn(c.answered_by),
    api_version = "2010-04-01",
    caller_name = nn(c.caller_name),
    date_created = U.rfc2822(c.date_created),
    date_updated = U.rfc2822(c.date_updated),
    direction = c.direction,
    duration = nn(c.duration),
    end_time = U.rfc2822(c.end_time),
    forwarded_from = nn(c.forwarded_from),
    from = c.from,
    from_formatted = formatted(c.from),
    group_sid = null,
    parent_call_sid = nn(c.parent_call_sid),
    phone_number_sid = own and own.sid or null,
    price = nn(c.price),
    price_unit = c.price_unit,
    queue_time = "0",
    sid = c.sid,
    start_time = U.rfc2822(c.start_time),
    status = c.status,
    subresource_uris = {
      recordings = base .. "/Recordings.json",
      notifications = base .. "/Notifications.json",
      payments = base .. "/Payments.json",
      events = base .. "/Events.json",
      siprec = base .. "/Siprec.json",
      streams = base .. "/Streams.json",
      transcriptions = base .. "/Transcriptions.json",
      user_defined_message_subscriptions = base .. "/UserDefinedMessageSubscriptions.json",
      user_defined_messages = base .. "/UserDefinedMessages.json",
    },
    to = c.to,
    to_formatted = formatted(c.to),
    trunk_sid = null,
    uri = base .. ".json",
  }
end

local function recording_json(acct, r, under_call, host)
  local uri = under_call
    and ("%s/Accounts/%s/Calls/%s/Recordings/%s.json"):format(API, acct.sid, r.call_sid, r.sid)
    or ("%s/Accounts/%s/Recordings/%s.json"):format(API, acct.sid, r.sid)
  return {
    account_sid = acct.sid,
    api_version = "2010-04-01",
    call_sid = r.call_sid,
    channels = r.channels,
    conference_sid = null,
    date_created = U.rfc2822(r.date_created),
    date_updated = U.rfc2822(r.date_created),
    duration = nn(r.duration),
    encryption_details = null,
    error_code = nn(r.error_code),
    media_url = ("http://%s%s/Accounts/%s/Recordings/%s"):format(host, API, acct.sid, r.sid),
    price = nn(r.price),
    price_unit = r.price_unit,
    sid = r.sid,
    source = r.source,
    start_time = U.rfc2822(r.start_time),
    status = r.status,
    track = r.track,
    uri = uri,
  }
end

local function list_calls(acct, params, base)
  local to, from = U.one(params.To), U.one(params.From)
  local status, parent = U.one(params.Status), U.one(params.ParentCallSid)
  local started, bad, v = date_filter(params, "StartTime")
  if not started then return bad_param(bad, v) end
  local ended
  ended, bad, v = date_filter(params, "EndTime")
  if not ended then return bad_param(bad, v) end
  local items = {}
  for _, c in ipairs(acct.calls) do
    if (not to or c.to == to) and (not from or c.from == from) and (not status or c.status == status)
        and (not parent or c.parent_call_sid == parent) and started(c.start_time) and ended(c.end_time) then
      items[#items + 1] = c
    end
  end
  table.sort(items, function(a, b)
    local ta, tb = a.start_time or a.date_created, b.start_time or b.date_created
    if ta ~= tb then return ta > tb end
    return a.seq > b.seq
  end)
  local out, err = M.page(params, items, base, { "To", "From", "ParentCallSid", "Status", "StartTime", "StartTime<",
    "StartTime>", "EndTime", "EndTime<", "EndTime>" }, "calls", sid_of, function(c) return call_json(acct, c) end)
  if not out then return bad_param(err, U.one(params[err])) end
  return U.json(200, out)
end

local function list_recordings(acct, params, base, call_sid, host)
  local created, bad, v = date_filter(params, "DateCreated")
  if not created then return bad_param(bad, v) end
  local items = {}
  for _, r in ipairs(acct.recordings) do
    if (not call_sid or r.call_sid == call_sid) and created(r.date_created) then items[#items + 1] = r end
  end
  table.sort(items, newest_first)
  local out, err = M.page(params, items, base, { "DateCreated", "DateCreated<", "DateCreated>", "CallSid" },
    "recordings", sid_of, function(r) return recording_json(acct, r, call_sid ~= nil, host) end)
  if not out then return bad_param(err, U.one(params[err])) end
  return U.json(200, out)
end

-- A few bytes with the right magic, so clients can check the type.
local function recording_media(r, ext)
  if ext == "mp3" then
    return 200, { ["Content-Type"] = "audio/mpeg" }, r.data or ("ID3\3\0\0\0\0\0\0simulated " .. r.sid)
  end
  return 200, { ["Content-Type"] = "audio/x-wav" }, r.data or ("RIFF\36\0\0\0WAVEfmt simulated " .. r.sid)
end

-- }======================================================================

-- {======================================================================
-- Incoming phone numbers

local function number_json(acct, n)
  return {
    account_sid = acct.sid,
    address_requirements = "none",
    address_sid = null,
    api_version = "2010-04-01",
    beta = false,
    bundle_sid = null,
    capabilities = { voice = n.capabilities.voice, sms = n.capabilities.sms, mms = n.capabilities.mms,
                     fax = n.capabilities.fax },
    date_created = U.rfc2822(n.date_created),
    date_updated = U.rfc2822(n.date_created),
    emergency_address_sid = null,
    emergency_address_status = "unregistered",
    emergency_status = "Inactive",
    friendly_name = n.friendly_name,
    identity_sid = null,
    origin = n.origin,
    phone_number = n.phone_number,
    sid = n.sid,
    sms_application_sid = "",
    sms_fallback_method = "POST",
    sms_fallback_url = "",
    sms_method = "POST",
    sms_url = "",
    status = n.status,
    status_callback = "",
    status_callback_method = "POST",
    trunk_sid = null,
    type = n.type,
    uri = ("%s/Accounts/%s/IncomingPhoneNumbers/%s.json"):format(API, acct.sid, n.sid),
    voice_application_sid = "",
    voice_caller_id_lookup = false,
    voice_fallback_method = "POST",
    voice_fallback_url = null,
    voice_method = "POST",
    voice_receive_mode = "voice",
    voice_url = null,
  }
end

local function list_numbers(acct, params, base)
  local pn, fname, origin = U.one(params.PhoneNumber), U.one(params.FriendlyName), U.one(params.Origin)
  local pat
  if pn and pn ~= "" then
    pat = pn:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", "%%d")
  end
  local items = {}
  for _, n in ipairs(acct.numbers) do
    if (not pat or n.phone_number:find(pat)) and (not fname or n.friendly_name == fname)
        and (not origin or n.origin == origin) then
      items[#items + 1] = n
    end
  end
  local out, err = M.page(params, items, base, { "Beta", "FriendlyName", "PhoneNumber", "Origin" },
    "incoming_phone_numbers", sid_of, function(n) return number_json(acct, n) end)
  if not out then return bad_param(err, U.one(params[err])) end
  return U.json(200, out)
end

-- }======================================================================

-- {======================================================================
-- Usage records

local SUBS = { Daily = true, Monthly = true, Yearly = true, Today = true, Yesterday = true, ThisMonth = true,
               LastMonth = true, AllTime = true }

-- A StartDate/EndDate value: YYYY-MM-DD or relative "-30days" / "+0days".
local function usage_day(v, today)
  if v == nil or v == "" then return nil end
  local sign, n = v:match("^([%+%-])(%d+)days?$")
  if sign then
    return today + (sign == "-" and -1 or 1) * tonumber(n) * 86400
  end
  local t = U.parse_time(v)
  return t and U.day_start(t)
end

local month_start = U.month_start

local function period_of(sub, day)
  local d = os.date("!*t", day)
  if sub == "Daily" then return day, day end
  if sub == "Monthly" then
    local s = U.timegm(d.year, d.month, 1)
    local e = (d.month == 12 and U.timegm(d.year + 1, 1, 1) or U.timegm(d.year, d.month + 1, 1)) - 86400
    return s, e
  end
  if sub == "Yearly" then return U.timegm(d.year, 1, 1), U.timegm(d.year, 12, 31) end
  return nil
end

local function fmt_num(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v == math.floor(v) then return ("%d"):format(v) end
  return tostring(v)
end

local function list_usage(st, acct, params, base, sub)
  local now = S.now(st)
  local today = U.day_start(now)
  local earliest = today
  for _, r in ipairs(acct.usage) do
    if r.day < earliest then earliest = r.day end
  end
  local s, e
  if sub == "Today" then
    s, e = today, today
  elseif sub == "Yesterday" then
    s, e = today - 86400, today - 86400
  elseif sub == "ThisMonth" then
    s, e = month_start(now), today
  elseif sub == "LastMonth" then
    e = month_start(now) - 86400
    s = month_start(e)
  elseif sub == "AllTime" then
    s, e = earliest, today
  else
    local sd, ed = U.one(params.StartDate), U.one(params.EndDate)
    s = usage_day(sd, today)
    if sd and sd ~= "" and not s then return bad_param("StartDate", sd) end
    e = usage_day(ed, today)
    if ed and ed ~= "" and not e then return bad_param("EndDate", ed) end
    s, e = s or earliest, e or today
  end
  local category = U.one(params.Category)
  if category == "" then category = nil end
  -- group rows by category and period
  local groups, order = {}, {}
  local function add(cat, desc, ps, pe, count, usage, price, count_unit, usage_unit)
    local k = cat .. "|" .. ps
    local g = groups[k]
    if not g then
      g = { category = cat, description = desc, ps = ps, pe = pe, count = 0, usage = 0, price = 0,
            count_unit = count_unit, usage_unit = usage_unit }
      groups[k] = g
      order[#order + 1] = g
    end
    g.count = g.count + count
    g.usage = g.usage + usage
    g.price = g.price + price
  end
  for _, r in ipairs(acct.usage) do
    if r.day >= s and r.day <= e then
      local ps, pe = period_of(sub, r.day)
      if not ps then ps, pe = s, e end
      if not category or category == r.category then
        add(r.category, r.description, ps, pe, r.count, r.usage, r.price, r.count_unit, r.usage_unit)
      end
      if not category or category == "totalprice" then
        add("totalprice", "Total Price", ps, pe, 0, 0, r.price, "", "usd")
      end
    end
  end
  for _, g in ipairs(order) do
    if g.category == "totalprice" then g.usage = g.price end
  end
  table.sort(order, function(a, b)
    if a.category ~= b.category then return a.category < b.category end
    return a.ps < b.ps
  end)
  local as_of = U.iso_offset(now)
  local function render(g)
    local q = "?Category=" .. U.escape(g.category)
    local ub = ("%s/Accounts/%s/Usage/Records"):format(API, acct.sid)
    return {
      account_sid = acct.sid,
      api_version = "2010-04-01",
      as_of = as_of,
      category = g.category,
      count = g.category == "totalprice" and null or fmt_num(g.count),
      count_unit = g.count_unit,
      description = g.description,
      end_date = U.ymd(g.pe),
      price = ("%.5f"):format(g.price),
      price_unit = "usd",
      start_date = U.ymd(g.ps),
      subresource_uris = {
        all_time = ub .. "/AllTime.json" .. q, daily = ub .. "/Daily.json" .. q,
        last_month = ub .. "/LastMonth.json" .. q, monthly = ub .. "/Monthly.json" .. q,
        this_month = ub .. "/ThisMonth.json" .. q, today = ub .. "/Today.json" .. q,
        yearly = ub .. "/Yearly.json" .. q, yesterday = ub .. "/Yesterday.json" .. q,
      },
      uri = ("%s%s&StartDate=%s&EndDate=%s"):format(base, q, U.ymd(g.ps), U.ymd(g.pe)),
      usage = g.category == "totalprice" and ("%.5f"):format(g.usage) or fmt_num(g.usage),
      usage_unit = g.usage_unit,
    }
  end
  local out, err = M.page(params, order, base, { "Category", "StartDate", "EndDate", "IncludeSubaccounts" },
    "usage_records", function(g) return g.category .. "." .. U.ymd(g.ps) end, render)
  if not out then return bad_param(err, U.one(params[err])) end
  return U.json(200, out)
end

-- }======================================================================

local function method_not_allowed(method, path)
  return U.error(405, 20004, ("Method %s not allowed on %s"):format(method, path))
end

-- Route a request under /2010-04-01/ for the authenticated account and
-- key (who.kind: "main", "standard" or "auth_token").
function M.route(sim, req, params, form, who)
  local st = sim.state
  local path, method = req.path, req.method
  local acct = who.account
  local host = req.headers.host or "127.0.0.1"

  if path == API .. "/Accounts.json" then
    if who.kind == "standard" then return U.auth_failed() end
    if method ~= "GET" then return method_not_allowed(method, path) end
    local out = M.page(params, { acct }, path, { "FriendlyName", "Status" }, "accounts", sid_of, account_json)
    return U.json(200, out)
  end

  local sid, rest = path:match("^/2010%-04%-01/Accounts/([^/]+)(.*)$")
  if not sid then return U.not_found(path) end
  local dot_json = rest == "" and sid:match("^(.-)%.json$")
  if dot_json then sid = dot_json end
  if sid:match("^SK") then
    return U.error(400, 21470, ("AccountSid %s is invalid"):format(sid))
  end
  if sid ~= acct.sid then return U.auth_failed() end

  if dot_json then
    if who.kind == "standard" then return U.auth_failed() end
    if method ~= "GET" then return method_not_allowed(method, path) end
    return U.json(200, account_json(acct))
  end

  if rest == "/Balance.json" then
    if method ~= "GET" then return method_not_allowed(method, path) end
    return U.json(200, { account_sid = acct.sid, balance = acct.balance, currency = acct.currency })
  end

  if rest == "/Messages.json" then
    if method == "POST" then return create_message(st, acct, form) end
    if method == "GET" then return list_messages(st, acct, params, path) end
    return method_not_allowed(method, path)
  end
  local msid, mrest = rest:match("^/Messages/([^/]+)(.*)$")
  if msid then
    local msg_sid = mrest == "" and msid:match("^(.-)%.json$") or msid
    local msg = acct.msg_by_sid[msg_sid]
    if not msg then return U.not_found(path) end
    if mrest == "" then
      if method == "GET" then return U.json(200, M.message_json(st, acct, msg)) end
      return method_not_allowed(method, path)
    end
    if method ~= "GET" then return method_not_allowed(method, path) end
    if mrest == "/Media.json" then return list_media(acct, msg, params, path) end
    local me, ext = mrest:match("^/Media/(ME%x+)(.*)$")
    if me then
      for _, md in ipairs(msg.media) do
        if md.sid == me then
          if ext == ".json" then return U.json(200, media_json(acct, msg, md)) end
          if ext == "" then return 200, { ["Content-Type"] = md.content_type }, md.data end
        end
      end
    end
    return U.not_found(path)
  end

  if rest == "/Calls.json" then
    if method ~= "GET" then return method_not_allowed(method, path) end
    return list_calls(acct, params, path)
  end
  local csid, crest = rest:match("^/Calls/(CA%x+)(.*)$")
  if csid then
    local call = acct.call_by_sid[csid]
    if not call then return U.not_found(path) end
    if method ~= "GET" then return method_not_allowed(method, path) end
    if crest == ".json" then return U.json(200, call_json(acct, call)) end
    if crest == "/Recordings.json" then return list_recordings(acct, params, path, csid, host) end
    local rsid = crest:match("^/Recordings/(RE%x+)%.json$")
    local r = rsid and acct.rec_by_sid[rsid]
    if r and r.call_sid == csid then return U.json(200, recording_json(acct, r, true, host)) end
    return U.not_found(path)
  end

  if rest == "/Recordings.json" then
    if method ~= "GET" then return method_not_allowed(method, path) end
    return list_recordings(acct, params, path, U.one(params.CallSid), host)
  end
  local rsid, rext = rest:match("^/Recordings/(RE%x+)(.*)$")
  if rsid then
    local r = acct.rec_by_sid[rsid]
    if not r then return U.not_found(path) end
    if method ~= "GET" then return method_not_allowed(method, path) end
    if rext == ".json" then return U.json(200, recording_json(acct, r, false, host)) end
    if rext == "" or rext == ".wav" then return recording_media(r, "wav") end
    if rext == ".mp3" then return recording_media(r, "mp3") end
    return U.not_found(path)
  end

  if rest == "/IncomingPhoneNumbers.json" then
    if method ~= "GET" then return method_not_allowed(method, path) end
    return list_numbers(acct, params, path)
  end
  local pn = rest:match("^/IncomingPhoneNumbers/(PN%x+)%.json$")
  if pn then
    for _, n in ipairs(acct.numbers) do
      if n.sid == pn then return U.json(200, number_json(acct, n)) end
    end
    return U.not_found(path)
  end

  local sub = rest:match("^/Usage/Records/(%a+)%.json$")
  if rest == "/Usage/Records.json" or (sub and SUBS[sub]) then
    if method ~= "GET" then return method_not_allowed(method, path) end
    return list_usage(st, acct, params, path, sub)
  end

  return U.not_found(path)
end

return M
