-- twilio_send_whatsapp: a free-form WhatsApp message (only inside the
-- 24-hour window) or an approved template (any time) from the tenant's
-- WhatsApp number. Before a template goes out, its WhatsApp approval is
-- read from the Content API: an unknown or rejected template is refused
-- without sending (if the approval cannot be read, the send goes ahead).
-- A free-form message outside the window fails with 63016, often only on
-- the message afterwards: the tool looks again while the message is still
-- queued, for up to tool_settings.twilio_send_whatsapp.recheck_seconds
-- (default 3; 0 turns it off), and explains it with the advice to use a
-- template.
local loop = require("core.loop")
local json = require("switchboard.json")
local T = require("integrations.twilio.common")
local vault = require("core.vault")
local reconcile = require("integrations.twilio.reconcile")

local function wa(n) return "whatsapp:" .. n end
local function plain(n) return n and (n:gsub("^whatsapp:", "")) or nil end

local function failed_message(v, data)
  data.outcome = "failed"
  data.status, data.error_code, data.error_explanation = v.status, v.error_code, v.error_explanation
  return nil, { message = ("The WhatsApp message %s failed: %s"):format(v.sid or "", v.error_explanation),
                code = v.error_code, hint = T.hint_for(v.error_code),
                more_info = ("https://www.twilio.com/docs/errors/%d"):format(v.error_code), data = data,
                outcome = "failed", audit = T.audit("failed", { sid = v.sid, status = v.status, error_code = v.error_code }) }
end

local PENDING = { queued = true, accepted = true, sending = true, scheduled = true }
local UNUSABLE = { rejected = true, paused = true, disabled = true }

-- The template's WhatsApp approval: nil, err_for_agent when it must not
-- be sent; else a table (possibly empty) with name and status.
local function template_check(ctx, sid)
  local c = ctx.twilio
  local body, err = c:get("content", ("/v1/Content/%s/ApprovalRequests"):format(sid))
  if not body then
    if err.status == 404 then
      return nil, { outcome = "failed", audit = { error = "template not found", template_sid = sid },
                    message = ("The template %s was not found on this account."):format(sid),
                    code = T.int(err.code), more_info = err.more_info,
                    hint = "Check the template SID (HX…) in the Twilio Console's Content Template Builder; do not"
                      .. " retry unchanged.", data = { outcome = "failed" } }
    end
    return {}
  end
  local approval = T.table(body.whatsapp) or {}
  local info = { name = T.str(approval.name), status = T.str(approval.status),
                 reason = T.str(approval.rejection_reason) }
  if info.status and UNUSABLE[info.status] then
    return nil, { outcome = "failed", audit = { error = "template " .. info.status, template_sid = sid },
                  message = ("The template %s%s is %s for WhatsApp%s, so it was not sent."):format(sid,
                    info.name and (" (" .. info.name .. ")") or "", info.status,
                    info.reason and (": " .. info.reason) or ""),
                  hint = "Use an approved template instead; an operator can list them in the Twilio Console.",
                  data = { outcome = "failed", template_status = info.status } }
  end
  return info
end

return {
  name = "twilio_send_whatsapp",
  title = "Send a WhatsApp message",
  description = "Sends one WhatsApp message from the tenant's WhatsApp number: either a free-form `body` (only"
    .. " when the recipient wrote to the business in the last 24 hours) or an approved template (`template_sid`"
    .. " HX…, with `template_variables`), which works any time. Give exactly one of body or template_sid."
    .. " Costs money and cannot be undone: send once.",
  input_schema = {
    type = "object",
    properties = {
      to = { type = "string", format = "e164",
             description = "Recipient's WhatsApp number in E.164 form, like +14155550123 (without 'whatsapp:')." },
      body = { type = "string", minLength = 1, maxLength = 1600,
               description = "Free-form text, at most 1,600 characters; only inside the 24-hour window."
                 .. " Not together with template_sid." },
      template_sid = { type = "string", format = "sid:HX",
                       description = "An approved Content template: HX followed by 32 hex characters."
                         .. " Not together with body." },
      template_variables = { type = "object", additionalProperties = { type = "string", maxLength = 1024 },
                             description = "Values for the template's placeholders, like {\"1\": \"Ana\","
                               .. " \"2\": \"3pm\"}. Only with template_sid." },
      media_url = { type = "string", format = "http-url", maxLength = 2048,
                    description = "Optional public http(s) URL of an image or file; only with body." },
    },
    required = { "to" },
    additionalProperties = false,
  },
  output_schema = {
    type = "object",
    additionalProperties = false,
    required = { "to", "from", "kind", "outcome" },
    properties = {
      sid = { type = "string" }, status = { type = "string" }, to = { type = "string" },
      from = { type = "string" }, kind = { type = "string", enum = { "freeform", "template" } },
      template_sid = { type = "string" }, template_name = { type = "string" },
      segments = { type = "integer" }, price = { type = "number" }, price_unit = { type = "string" },
      date_created = { type = "string" }, error_code = { type = "integer" },
      error_explanation = { type = "string" },
      outcome = { type = "string", const = "sent",
                  description = "sent: Twilio accepted it (an error result says failed or unknown)" },
    },
  },
  annotations = T.WRITE,
  writes = true,
  sends = { recipient = "to", texts = { { "body", "the message body" },
            { "template_variables", "template variable", map = true }, { "media_url", "the media URL" } } },
  check = function(args)
    if args.body and args.template_sid then
      return nil, "give exactly one of `body` (a free-form message) or `template_sid` (an approved template),"
        .. " not both"
    end
    if not args.body and not args.template_sid then
      return nil, "give exactly one of `body` (a free-form message, only within 24 hours of the recipient's"
        .. " last message) or `template_sid` (an approved template, any time)"
    end
    if args.body and not args.body:find("%S") then
      return nil, "`body` must contain some text, not only spaces"
    end
    if args.template_variables and not args.template_sid then
      return nil, "`template_variables` is only used with `template_sid`"
    end
    if args.media_url and args.template_sid then
      return nil, "`media_url` is only used with `body`: a template carries its own media"
    end
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
    local number = ctx.connection.whatsapp_number
    if not number then
      return nil, T.not_configured("No WhatsApp number configured: the tenant's Twilio connection has no"
        .. " WhatsApp sender to send from.",
        "Do not retry. An operator sets one with `switchboard admin twilio update --whatsapp-number +E164`;"
          .. " SMS may still work with twilio_send_sms.")
    end
    local c = ctx.twilio
    local form = { To = wa(args.to), From = wa(number) }
    local template
    if args.template_sid then
      local terr
      template, terr = template_check(ctx, args.template_sid)
      if not template then return nil, terr end
      form.ContentSid = args.template_sid
      if args.template_variables and next(args.template_variables) then
        form.ContentVariables = json.encode(args.template_variables)
      end
    else
      form.Body = args.body
      if args.media_url then form.MediaUrl = { args.media_url } end
    end
    local m, err = T.send(ctx, "api", c:acct("Messages.json"), form, { text = args.body,
      hash = form.ContentSid and reconcile.template_hash(form.ContentSid, form.ContentVariables, vault.sha256_hex) })
    local detail = { to = wa(args.to), from = wa(number), template_sid = args.template_sid }
    if not m then
      local over = {}
      if args.template_sid then
        over[20404] = { message = ("Twilio could not use the template %s (not found on this account).")
          :format(args.template_sid), hint = "Check the template SID in the Twilio Console (Content Template"
          .. " Builder); do not retry unchanged." }
        over[21656] = { message = "The template variables are not valid for this template.",
                        hint = "Give a value for each placeholder as {\"1\": \"…\"}; do not retry unchanged." }
      end
      return nil, T.send_failure(err, "message",
        ("Check with twilio_search_messages (action search, to = whatsapp:%s, date_sent_after = today) whether it"
          .. " went out."):format(args.to), detail, over)
    end
    local v = T.message_view(m)
    local data = { sid = v.sid, status = v.status, to = plain(v.to) or args.to, from = plain(v.from) or number,
                   kind = args.template_sid and "template" or "freeform", template_sid = args.template_sid,
                   template_name = template and template.name,
                   segments = v.segments, price = v.price, price_unit = v.price_unit,
                   date_created = v.date_created, error_code = v.error_code,
                   error_explanation = v.error_explanation }
    if v.error_code and T.FAILED[v.status or ""] then return failed_message(v, data) end
    -- a free-form message outside the window fails shortly after it was accepted
    local budget = tonumber(ctx.settings.recheck_seconds) or 3
    local step = math.min(0.5, budget)
    local waited = 0
    while not args.template_sid and v.sid and PENDING[v.status or "queued"] and waited + step <= budget
        and step > 0 and not ctx.cancelled() do
      loop.sleep(step)
      waited = waited + step
      local again = c:get("api", c:acct(("Messages/%s.json"):format(v.sid)))
      if not again then break end
      local v2 = T.message_view(again)
      if v2.status then v.status, data.status = v2.status, v2.status end
      if v2.error_code and T.FAILED[v2.status or ""] then return failed_message(v2, data) end
    end
    data.outcome = "sent"
    local what = "free-form message"
    if args.template_sid then
      what = ("template %s%s"):format(args.template_sid, data.template_name and (" (" .. data.template_name .. ")") or "")
    end
    local text = ("WhatsApp %s %s to %s from %s was accepted by Twilio with status %s."):format(
      what, v.sid or "(no sid)", data.to, data.from, v.status or "unknown")
    if args.template_sid then
      text = text .. " Check delivery later with twilio_search_messages (action get_details); do not send it again."
    else
      text = text .. " A free-form message reaches the recipient only if they wrote to the business in the last"
        .. " 24 hours; if it fails with error 63016, send an approved template instead. Do not send it again."
    end
    return { text = text, data = data, outcome = "sent", audit = T.audit("sent", { sid = v.sid, status = v.status,
             error_code = v.error_code, template_sid = args.template_sid }) }
  end,
}
