-- twilio_search_messages: the account's message history (search), one
-- message's delivery details (get_details) and its media (get_media).
local json = require("switchboard.json")
local T = require("integrations.twilio.common")

-- search: the account's messages, the window on the date sent
local LISTING = { path = "Messages.json", key = "messages", after = "date_sent_after",
                  before = "date_sent_before", param = "DateSent", field = "date_sent" }

local function address_ok(s)
  return T.is_e164(s) or (s:sub(1, 9) == "whatsapp:" and T.is_e164(s:sub(10)))
end

local function message_sid_ok(s)
  return #s == 34 and (s:sub(1, 2) == "SM" or s:sub(1, 2) == "MM") and s:sub(3):match("^%x+$") ~= nil
end

local function search(ctx, args)
  local items, more = T.list_window(ctx, args, LISTING, { To = args.to, From = args.from })
  if not items then return nil, T.failure(more) end
  local out = {}
  for i, m in ipairs(items) do out[i] = T.message_view(m) end
  local filters = {}
  if args.to then filters[#filters + 1] = "to " .. args.to end
  if args.from then filters[#filters + 1] = "from " .. args.from end
  if args.date_sent_after then filters[#filters + 1] = "sent on or after " .. args.date_sent_after end
  if args.date_sent_before then filters[#filters + 1] = "sent on or before " .. args.date_sent_before end
  local text = ("Found %s%s (newest first)."):format(T.plural(#out, "message"),
    #filters > 0 and (" " .. table.concat(filters, ", ")) or "")
  local failed = 0
  for _, m in ipairs(out) do if m.error_code or T.FAILED[m.status or ""] then failed = failed + 1 end end
  if #out > 0 then
    local m = out[1]
    text = text .. (" Latest: %s %s → %s, %s%s."):format(m.sid or "?", m.from or "?", m.to or "?",
      m.status or "unknown", m.date_sent and (", sent " .. m.date_sent) or "")
  end
  if failed > 0 then
    text = text .. (" %s failed or undelivered; use get_details on one for the reason."):format(
      T.plural(failed, "message"))
  end
  if more then
    text = text .. (" More messages match than the limit of %d: narrow the dates or raise the limit"
      .. " (at most 100)."):format(args.limit)
  end
  return { text = text, data = { action = "search", count = #out, more = more, messages = json.array(out) } }
end

local function get_details(ctx, args)
  local c = ctx.twilio
  local m, err = c:get("api", c:acct(("Messages/%s.json"):format(args.message_sid)))
  if not m then
    return nil, T.failure(err, { [20404] = { message = ("There is no message %s on this account.")
      :format(args.message_sid), hint = "Check the sid (search first with action search)." } })
  end
  local v = T.message_view(m, true)
  local text = ("Message %s %s → %s (%s): status %s"):format(v.sid or args.message_sid, v.from or "?",
    v.to or "?", v.direction or "?", v.status or "unknown")
  if v.date_sent then text = text .. ", sent " .. v.date_sent end
  if v.segments then text = text .. ", " .. T.plural(v.segments, "segment") end
  if v.price then text = text .. (", price %s %s"):format(v.price, v.price_unit or "") end
  text = text .. "."
  if v.error_code then
    text = text .. (" Error %d: %s"):format(v.error_code, v.error_explanation)
    local hint = T.hint_for(v.error_code)
    if hint then text = text .. " " .. hint end
  elseif v.status == "queued" or v.status == "accepted" or v.status == "sending" or v.status == "scheduled" then
    text = text .. " It is not delivered yet; check again later rather than resending."
  end
  local data = v
  data.action = "get_details"
  -- a message this runtime sent: its send record and delivery receipts
  data.delivery = ctx.delivery(v.sid or args.message_sid)
  local d = data.delivery
  if d and d.status then
    text = text .. (" Delivery receipt (status callback): %s%s."):format(d.status,
      d.error_code and (", error %d"):format(d.error_code) or "")
  end
  return { text = text, data = data }
end

local function get_media(ctx, args)
  local c = ctx.twilio
  local path = c:acct(("Messages/%s/Media.json"):format(args.message_sid))
  local items, more = T.collect(c, "api", path, { PageSize = 100 }, "media_list", 100)
  if not items then
    return nil, T.failure(more, { [20404] = { message = ("There is no message %s on this account.")
      :format(args.message_sid), hint = "Check the sid (search first with action search)." } })
  end
  local base = c:base("api")
  local out = {}
  for i, m in ipairs(items) do
    local uri = T.str(m.uri)
    local sid = T.str(m.sid)
    if not uri and sid then uri = c:acct(("Messages/%s/Media/%s.json"):format(args.message_sid, sid)) end
    out[i] = { sid = sid, content_type = T.str(m.content_type), date_created = T.time(m.date_created),
               url = uri and (base .. uri:gsub("%.json$", "")) or nil }
  end
  local text
  if #out == 0 then
    text = ("Message %s has no media."):format(args.message_sid)
  else
    local kinds = {}
    for i, m in ipairs(out) do kinds[i] = m.content_type or "unknown type" end
    text = ("Message %s has %s (%s). The URLs need the account's credentials to open; they are for an operator,"
      .. " not for sharing with recipients."):format(args.message_sid, T.plural(#out, "media file"),
      table.concat(kinds, ", "))
  end
  -- each file as a resource link too (the URL needs the account's credentials)
  local links = {}
  for _, m in ipairs(out) do
    if m.url then
      links[#links + 1] = { type = "resource_link", uri = m.url, name = m.sid or m.url:match("[^/]+$"),
                            mimeType = m.content_type }
    end
  end
  return { text = text, data = { action = "get_media", message_sid = args.message_sid, count = #out,
                                 more = more, media = json.array(out) }, content = links }
end

local MESSAGE_SID = { type = "string", maxLength = 34,
                      description = "get_details, get_media: the message sid (SM… or MM…)." }

return {
  name = "twilio_search_messages",
  title = "Search SMS and WhatsApp messages",
  description = "Reads the account's message history. action \"search\": messages newest first, filtered by"
    .. " to, from and sent dates (ISO 8601), limit default 20, at most 100. action \"get_details\": one message's"
    .. " delivery status, error code (with what it means) and price, by message_sid. action \"get_media\": the"
    .. " media of one message (sid, content type, URL). Read-only.",
  actions = {
    search = {
      schema = { properties = {
        to = { type = "string", maxLength = 64,
               description = "search: only messages to this number (E.164, or whatsapp:+E164 for WhatsApp)." },
        from = { type = "string", maxLength = 64,
                 description = "search: only messages from this number (E.164, or whatsapp:+E164)." },
        date_sent_after = { type = "string", format = "date-time",
                            description = "search: sent on or after this date or instant (ISO 8601, e.g. 2026-01-31)." },
        date_sent_before = { type = "string", format = "date-time",
                             description = "search: sent on or before this date or instant (ISO 8601; a date"
                               .. " includes the whole day)." },
        limit = { type = "integer", minimum = 1, maximum = 100, default = 20,
                  description = "search: at most this many messages (default 20, at most 100)." },
      } },
      handler = search,
    },
    get_details = { schema = { properties = { message_sid = MESSAGE_SID }, required = { "message_sid" } },
                    handler = get_details },
    get_media = { schema = { properties = { message_sid = MESSAGE_SID }, required = { "message_sid" } },
                  handler = get_media },
  },
  -- one shape per action, told apart by `action`
  output_schema = {
    type = "object",
    oneOf = {
      { type = "object", additionalProperties = false, required = { "action", "count", "more", "messages" },
        properties = { action = { type = "string", const = "search" }, count = { type = "integer" },
                       more = { type = "boolean" },
                       messages = { type = "array", items = { ["$ref"] = "#/$defs/message" } } } },
      (function()
        local d = T.message_schema(true)
        d.properties.action = { type = "string", const = "get_details" }
        d.properties.delivery = { type = "object", additionalProperties = false,
          required = { "send_id", "record", "receipts" },
          description = "Only for a message this runtime sent: its send record and what Twilio's status"
            .. " callbacks reported (receipts false: no callback was asked for).",
          properties = { send_id = { type = "integer" }, record = { type = "string" },
                         receipts = { type = "boolean" }, status = { type = "string" },
                         error_code = { type = "integer" }, delivered_at = { type = "string" },
                         updated_at = { type = "string" } } }
        d.required, d.additionalProperties = { "action" }, false
        return d
      end)(),
      { type = "object", additionalProperties = false, required = { "action", "message_sid", "count", "more", "media" },
        properties = { action = { type = "string", const = "get_media" }, message_sid = { type = "string" },
                       count = { type = "integer" }, more = { type = "boolean" },
                       media = { type = "array", items = { ["$ref"] = "#/$defs/media" } } },
        description = "get_media: the media files; each is also a resource_link content block." },
    },
    ["$defs"] = {
      message = (function()
        local m = T.message_schema(false)
        m.additionalProperties = false
        return m
      end)(),
      media = { type = "object", additionalProperties = false, properties = {
        sid = { type = "string" }, content_type = { type = "string" }, url = { type = "string" },
        date_created = { type = "string" } } },
    },
  },
  annotations = T.READ,
  -- Third-party text (switchboard.taint): the bodies of messages people
  -- sent to the tenant, from their sender, and media URLs (what a sender
  -- attached). Outbound bodies are the tenant's own words (sent under the
  -- same guard), so they are not labelled; a message whose direction is
  -- missing counts as inbound.
  untrusted = {
    { "messages[].body", from = "messages[].from", except = { ["messages[].direction"] = "^outbound" } },
    { "body", from = "from", except = { direction = "^outbound" } },
    "media[].url",
  },
  check = function(args)
    if args.action == "search" then
      for _, k in ipairs({ "to", "from" }) do
        if args[k] and not address_ok(args[k]) then
          return nil, ("`%s` must be a phone number in E.164 format, like +14155550123 (or whatsapp:+14155550123"
            .. " for WhatsApp) (got %q)"):format(k, args[k])
        end
      end
      local _, werr = T.args_window(args, LISTING)
      if werr then return nil, werr end
    elseif not message_sid_ok(args.message_sid) then
      return nil, ("`message_sid` must be SM or MM followed by 32 hexadecimal characters (got %q)")
        :format(args.message_sid)
    end
    return true
  end,
}
