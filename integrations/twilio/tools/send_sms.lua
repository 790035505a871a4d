-- twilio_send_sms: one SMS (or MMS with a media URL) from the tenant's
-- default number. Never resent: an unknown outcome is reported as such.
local T = require("integrations.twilio.common")

local function sent_text(m, media)
  local parts = { ("SMS %s to %s from %s was accepted by Twilio with status %s"):format(
    m.sid or "(no sid)", m.to or "?", m.from or "?", m.status or "unknown") }
  if m.segments then parts[#parts] = parts[#parts] .. (", %s"):format(T.plural(m.segments, "segment")) end
  if media then parts[#parts] = parts[#parts] .. ", with 1 media file" end
  if m.price then parts[#parts] = parts[#parts] .. (", price %s %s"):format(m.price, m.price_unit or "") end
  parts[#parts] = parts[#parts] .. "."
  if m.error_code then
    parts[#parts + 1] = ("Twilio reports error %d: %s"):format(m.error_code, m.error_explanation)
  else
    parts[#parts + 1] = "Accepted is not delivered: check delivery later with twilio_search_messages"
      .. " (action get_details). Do not send it again."
  end
  return table.concat(parts, " ")
end

return {
  name = "twilio_send_sms",
  title = "Send an SMS",
  description = "Sends one SMS (or an MMS when media_url is given) from the tenant's default Twilio number to"
    .. " an E.164 number. Costs money and cannot be undone: send once, never retry after an unknown outcome."
    .. " Returns the message sid, status (queued means accepted, not delivered), segments and price if known.",
  input_schema = {
    type = "object",
    properties = {
      to = { type = "string", format = "e164", description = "Recipient in E.164 form, like +14155550123." },
      body = { type = "string", minLength = 1, maxLength = 1600,
               description = "The text, at most 1,600 characters (over 160 GSM-7 or 70 Unicode characters"
                 .. " is split into several billed segments)." },
      media_url = { type = "string", format = "http-url", maxLength = 2048,
                    description = "Optional public http(s) URL of an image or file to send as MMS." },
    },
    required = { "to", "body" },
    additionalProperties = false,
  },
  output_schema = {
    type = "object",
    additionalProperties = false,
    required = { "to", "from", "outcome" },
    properties = {
      sid = { type = "string" }, status = { type = "string" }, to = { type = "string" },
      from = { type = "string" }, segments = { type = "integer" }, num_media = { type = "integer" },
      price = { type = "number" }, price_unit = { type = "string" }, date_created = { type = "string" },
      error_code = { type = "integer" }, error_explanation = { type = "string" },
      outcome = { type = "string", const = "sent",
                  description = "sent: Twilio accepted it (an error result says failed or unknown)" },
    },
  },
  annotations = T.WRITE,
  writes = true,
  sends = { recipient = "to", texts = { { "body", "the message body" }, { "media_url", "the media URL" } } },
  check = function(args)
    if not args.body:find("%S") then return nil, "`body` must contain some text, not only spaces" end
    if args.media_url then
      local url, merr = T.media_url(args.media_url)
      if not url then return nil, merr end
      args.media_url = url
    end
    return true
  end,
  handler = function(ctx, args)
    local allowed, merr = T.media_check(ctx, args)
    if not allowed then return nil, merr end
    local from = ctx.connection.default_number
    if not from then
      return nil, T.not_configured("No phone number configured: the tenant's Twilio connection has no"
        .. " default SMS number to send from.",
        "Do not retry. An operator sets one with `switchboard admin twilio update --default-number +E164`.")
    end
    local form = { To = args.to, From = from, Body = args.body }
    if args.media_url then form.MediaUrl = { args.media_url } end
    local m, err = T.send(ctx, "api", ctx.twilio:acct("Messages.json"), form, { text = args.body })
    if not m then
      return nil, T.send_failure(err, "message",
        ("Check with twilio_search_messages (action search, to = %s, date_sent_after = today) whether it went out.")
          :format(args.to), { to = args.to, from = from })
    end
    local v = T.message_view(m)
    v.to, v.from = v.to or args.to, v.from or from
    local data = { sid = v.sid, status = v.status, to = v.to, from = v.from, segments = v.segments,
                   num_media = v.num_media, price = v.price, price_unit = v.price_unit,
                   date_created = v.date_created, error_code = v.error_code,
                   error_explanation = v.error_explanation }
    if v.error_code and T.FAILED[v.status or ""] then
      data.outcome = "failed"
      return nil, { message = ("The message %s failed: %s"):format(v.sid or "", v.error_explanation),
                    code = v.error_code, hint = T.hint_for(v.error_code), data = data, outcome = "failed",
                    audit = T.audit("failed", { sid = v.sid, status = v.status, error_code = v.error_code }) }
    end
    data.outcome = "sent"
    return { text = sent_text(v, args.media_url ~= nil), data = data, outcome = "sent",
             audit = T.audit("sent", { sid = v.sid, status = v.status, error_code = v.error_code }) }
  end,
}
