-- twilio_manage_calls: recent calls, one call's details and its
-- recordings. Read-only: it never places, changes or ends a call.
local json = require("switchboard.json")
local T = require("integrations.twilio.common")

-- list_recent: the account's calls, the window on the start time
local LISTING = { path = "Calls.json", key = "calls", after = "start_time_after",
                  before = "start_time_before", param = "StartTime", field = "start_time" }

local function call_view(m, full)
  local out = {
    sid = T.str(m.sid), from = T.str(m.from), to = T.str(m.to), direction = T.str(m.direction),
    status = T.str(m.status), start_time = T.time(m.start_time), end_time = T.time(m.end_time),
    duration = T.int(m.duration), price = T.price(m.price), price_unit = T.str(m.price_unit),
  }
  if full then
    out.answered_by = T.str(m.answered_by)
    out.parent_call_sid = T.str(m.parent_call_sid)
    out.caller_name = T.str(m.caller_name)
    out.date_created = T.time(m.date_created)
    out.forwarded_from = T.str(m.forwarded_from)
  end
  return out
end

local CALL_PROPS = {
  sid = { type = "string" }, from = { type = "string" }, to = { type = "string" },
  direction = { type = "string" }, status = { type = "string" }, start_time = { type = "string" },
  end_time = { type = "string" }, duration = { type = "integer", description = "seconds" },
  price = { type = "number" }, price_unit = { type = "string" },
}

local function list_recent(ctx, args)
  local items, more = T.list_window(ctx, args, LISTING, { To = args.to, From = args.from })
  if not items then return nil, T.failure(more) end
  local out = {}
  for i, m in ipairs(items) do out[i] = call_view(m) end
  local text = ("Found %s (newest first)."):format(T.plural(#out, "call"))
  if #out > 0 then
    local m = out[1]
    text = text .. (" Latest: %s %s → %s, %s, %s%s."):format(m.sid or "?", m.from or "?", m.to or "?",
      m.direction or "?", m.status or "unknown", m.duration and (", " .. T.plural(m.duration, "second")) or "")
  end
  if more then
    text = text .. (" More calls match than the limit of %d: narrow the times or raise the limit (at most 100).")
      :format(args.limit)
  end
  return { text = text, data = { action = "list_recent", count = #out, more = more, calls = json.array(out) } }
end

local function not_found(sid)
  return { [20404] = { message = ("There is no call %s on this account."):format(sid),
                       hint = "Check the sid (list calls first with action list_recent)." } }
end

local function get_details(ctx, args)
  local c = ctx.twilio
  local m, err = c:get("api", c:acct(("Calls/%s.json"):format(args.call_sid)))
  if not m then return nil, T.failure(err, not_found(args.call_sid)) end
  local v = call_view(m, true)
  local text = ("Call %s %s → %s (%s): %s"):format(v.sid or args.call_sid, v.from or "?", v.to or "?",
    v.direction or "?", v.status or "unknown")
  if v.start_time then text = text .. ", started " .. v.start_time end
  if v.duration then text = text .. ", lasted " .. T.plural(v.duration, "second") end
  if v.answered_by then text = text .. ", answered by " .. v.answered_by end
  if v.price then text = text .. (", price %s %s"):format(v.price, v.price_unit or "") end
  v.action = "get_details"
  return { text = text .. ".", data = v }
end

local function get_recordings(ctx, args)
  local c = ctx.twilio
  local items, more = T.collect(c, "api", c:acct(("Calls/%s/Recordings.json"):format(args.call_sid)),
    { PageSize = 100 }, "recordings", 100)
  if not items then return nil, T.failure(more, not_found(args.call_sid)) end
  local base = c:base("api")
  local out = {}
  for i, r in ipairs(items) do
    local sid = T.str(r.sid)
    local media = T.str(r.media_url)
    if media then
      media = base .. (media:gsub("^%a[%w+.-]*://[^/]+", ""))
    elseif sid then
      media = base .. c:acct(("Recordings/%s.mp3"):format(sid))
    end
    out[i] = { sid = sid, duration = T.int(r.duration), status = T.str(r.status), channels = T.int(r.channels),
               source = T.str(r.source), start_time = T.time(r.start_time), price = T.price(r.price),
               price_unit = T.str(r.price_unit), error_code = T.int(r.error_code), media_url = media }
  end
  local text
  if #out == 0 then
    text = ("Call %s has no recordings."):format(args.call_sid)
  else
    local total = 0
    for _, r in ipairs(out) do total = total + (r.duration or 0) end
    text = ("Call %s has %s, %s in all. The media URLs need the account's credentials to open; they are for an"
      .. " operator."):format(args.call_sid, T.plural(#out, "recording"), T.plural(total, "second"))
  end
  return { text = text, data = { action = "get_recordings", call_sid = args.call_sid, count = #out, more = more,
                                 recordings = json.array(out) } }
end

local CALL_SID = { type = "string", format = "sid:CA",
                   description = "get_details, get_recordings: the call sid (CA followed by 32 hex characters)." }

local details = { action = { type = "string", const = "get_details" } }
for k, v in pairs(CALL_PROPS) do details[k] = v end
for _, k in ipairs({ "answered_by", "parent_call_sid", "caller_name", "date_created", "forwarded_from" }) do
  details[k] = { type = "string" }
end

-- one shape per action, told apart by `action`
local OUTPUT = {
  type = "object",
  oneOf = {
    { type = "object", additionalProperties = false, required = { "action", "count", "more", "calls" },
      properties = { action = { type = "string", const = "list_recent" }, count = { type = "integer" },
                     more = { type = "boolean" },
                     calls = { type = "array", items = { ["$ref"] = "#/$defs/call" } } } },
    { type = "object", additionalProperties = false, required = { "action" }, properties = details },
    { type = "object", additionalProperties = false, required = { "action", "call_sid", "count", "more", "recordings" },
      properties = { action = { type = "string", const = "get_recordings" }, call_sid = { type = "string" },
                     count = { type = "integer" }, more = { type = "boolean" },
                     recordings = { type = "array", items = { ["$ref"] = "#/$defs/recording" } } } },
  },
  ["$defs"] = {
    call = { type = "object", additionalProperties = false, properties = CALL_PROPS },
    recording = { type = "object", additionalProperties = false, properties = {
      sid = { type = "string" }, duration = { type = "integer" }, status = { type = "string" },
      channels = { type = "integer" }, source = { type = "string" }, start_time = { type = "string" },
      price = { type = "number" }, price_unit = { type = "string" }, error_code = { type = "integer" },
      media_url = { type = "string" } } },
  },
}

return {
  name = "twilio_manage_calls",
  title = "Review calls and recordings",
  description = "Reads the account's voice calls; it never places, changes or ends a call. action \"list_recent\":"
    .. " calls newest first, filtered by to, from and start times (ISO 8601), limit default 20, at most 100."
    .. " action \"get_details\": one call's status, direction, duration and price, by call_sid. action"
    .. " \"get_recordings\": a call's recordings (sid, duration, status, media URL).",
  actions = {
    list_recent = {
      schema = { properties = {
        to = { type = "string", format = "e164", description = "list_recent: only calls to this number (E.164)." },
        from = { type = "string", format = "e164", description = "list_recent: only calls from this number (E.164)." },
        start_time_after = { type = "string", format = "date-time",
                             description = "list_recent: started on or after this date or instant (ISO 8601)." },
        start_time_before = { type = "string", format = "date-time",
                              description = "list_recent: started on or before this date or instant (ISO 8601;"
                                .. " a date includes the whole day)." },
        limit = { type = "integer", minimum = 1, maximum = 100, default = 20,
                  description = "list_recent: at most this many calls (default 20, at most 100)." },
      } },
      handler = list_recent,
    },
    get_details = { schema = { properties = { call_sid = CALL_SID }, required = { "call_sid" } },
                    handler = get_details },
    get_recordings = { schema = { properties = { call_sid = CALL_SID }, required = { "call_sid" } },
                       handler = get_recordings },
  },
  output_schema = OUTPUT,
  annotations = T.READ,
  -- Third-party text (switchboard.taint): a call's caller name (CNAM) is
  -- set by whoever holds the calling number.
  untrusted = { { "caller_name", from = "from" } },
  check = function(args)
    if args.action == "list_recent" then
      local _, werr = T.args_window(args, LISTING)
      if werr then return nil, werr end
    end
    return true
  end,
}
