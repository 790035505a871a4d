-- twilio_verify_phone: Twilio Verify, two steps. send_code writes (it
-- sends a code that costs money, and goes through the send policies);
-- check_code only reads. A wrong code is an answer (approved: false), not
-- an error.
local T = require("integrations.twilio.common")
local schema = require("switchboard.schema")

local function is_email(s) return schema.formats.email.check(s) end

local function no_service()
  return T.not_configured("Verification is not set up: no Verify Service SID is configured for this"
    .. " tenant's Twilio connection.",
    "Do not retry. An operator must create a Verify Service in the Twilio Console and configure its Verify Service"
      .. " SID (VA…) with `switchboard admin twilio update --verify-service-sid VA…`.")
end

local EXPIRED = {
  message = "There is no pending verification for this destination: the code expired (codes last 10 minutes),"
    .. " was already approved, or its attempts were used up.",
  hint = "Send a new code with action send_code, then check the new code.",
}

-- both actions need the tenant's Verify Service
local function with_service(fn)
  return function(ctx, args)
    local service = ctx.connection.verify_service_sid
    if not service then return nil, no_service() end
    return fn(ctx, args, service)
  end
end

local TO = { type = "string", maxLength = 254,
             description = "The phone number in E.164 form (+14155550123), or an email address for channel email." }

local function send_code(ctx, args, service)
  local body, err = T.send(ctx, "verify", ("/v2/Services/%s/Verifications"):format(service),
    { To = args.to, Channel = args.channel })
  local detail = { to = args.to, channel = args.channel }
  if not body then
    return nil, T.send_failure(err, "code",
      "Ask the person whether a code arrived before sending another; check_code works with any code that did.",
      detail, { [20404] = { message = "Twilio could not find the Verify Service configured for this tenant.",
                            hint = "Do not retry; an operator must check the Verify Service SID." } })
  end
  local data = { action = "send_code", sid = T.str(body.sid), status = T.str(body.status),
                 to = T.str(body.to) or args.to, channel = T.str(body.channel) or args.channel,
                 date_created = T.time(body.date_created), valid_minutes = 10 }
  local attempts = T.table(body.send_code_attempts)
  if attempts then data.send_attempts = #attempts end
  data.outcome = "sent"
  local how = ({ sms = "by SMS", call = "by a voice call", whatsapp = "on WhatsApp", email = "by email" })[args.channel]
  local text = ("A verification code was sent to %s %s (verification %s, status %s). Ask the person for the code,"
    .. " then call this tool with action check_code. The code is valid for about 10 minutes; do not send another"
    .. " unless it did not arrive (at most 5 sends in 10 minutes)."):format(data.to, how, data.sid or "?",
    data.status or "pending")
  if data.send_attempts and data.send_attempts > 1 then
    text = text .. (" This destination has had %s in this verification."):format(T.plural(data.send_attempts, "send"))
  end
  return { text = text, data = data, outcome = "sent",
           audit = T.audit("sent", { sid = data.sid, status = data.status, channel = data.channel }) }
end

local function check_code(ctx, args, service)
  local c = ctx.twilio
  local body, err = c:post("verify", ("/v2/Services/%s/VerificationCheck"):format(service),
    { To = args.to, Code = args.code })
  if not body then
    if err.unknown then
      return nil, { message = ("The check's answer was lost (%s)."):format(err.transport or err.message or "no answer"),
                    hint = "Check the same code once more.", data = { outcome = "unknown" } }
    end
    return nil, T.failure(err, { [20404] = EXPIRED, [404] = EXPIRED })
  end
  local status = T.str(body.status) or "pending"
  local approved = status == "approved" or (T.bool(body.valid) == true and status ~= "pending")
  local data = { action = "check_code", approved = approved, status = status, sid = T.str(body.sid),
                 to = T.str(body.to) or args.to, channel = T.str(body.channel) }
  local audit = T.compact({ sid = data.sid, status = status, approved = approved })
  local text
  if approved then
    text = ("The code is correct: %s is verified (verification %s)."):format(data.to, data.sid or "?")
  elseif status == "max_attempts_reached" then
    text = ("The code is not correct and the attempt limit was reached for %s. Do not check again; wait 10 minutes,"
      .. " then send a new code with action send_code."):format(data.to)
  elseif status == "expired" or status == "canceled" or status == "deleted" or status == "failed" then
    text = ("The verification for %s is %s. Send a new code with action send_code."):format(data.to, status)
  else
    text = ("The code is not correct (status %s); %s is not verified. Ask the person to read the code again;"
      .. " after 5 wrong attempts the verification is locked."):format(status, data.to)
  end
  return { text = text, data = data, audit = audit }
end

return {
  name = "twilio_verify_phone",
  title = "Verify a phone number or email",
  description = "Twilio Verify in two steps. action \"send_code\": sends a one-time code to `to` (E.164 number, or"
    .. " an email address with channel email) by sms (default), call, whatsapp or email; this costs money."
    .. " action \"check_code\": checks the `code` the person gives back; a wrong code returns approved: false,"
    .. " not an error. Codes last about 10 minutes; never send codes in a loop.",
  actions = {
    -- costs money, and goes through the send policies
    send_code = {
      schema = {
        properties = {
          to = TO,
          channel = { type = "string", enum = { "sms", "call", "whatsapp", "email" }, default = "sms",
                      description = "send_code: how to deliver the code; default sms. email only with an email"
                        .. " address." },
        },
        required = { "to" },
      },
      writes = true,
      sends = { recipient = "to" },
      handler = with_service(send_code),
    },
    check_code = {
      schema = {
        properties = {
          to = TO,
          code = { type = "string", minLength = 4, maxLength = 10,
                   description = "check_code: the code the person received (4 to 10 characters)." },
        },
        required = { "to", "code" },
      },
      writes = false,
      handler = with_service(check_code),
    },
  },
  -- one shape per action, told apart by `action`
  output_schema = {
    type = "object",
    oneOf = {
      { type = "object", additionalProperties = false, required = { "action", "to", "channel", "valid_minutes", "outcome" },
        properties = {
          action = { type = "string", const = "send_code" }, sid = { type = "string" }, status = { type = "string" },
          to = { type = "string" }, channel = { type = "string" }, date_created = { type = "string" },
          valid_minutes = { type = "integer" }, send_attempts = { type = "integer" },
          outcome = { type = "string", const = "sent" },
        } },
      { type = "object", additionalProperties = false, required = { "action", "approved", "status", "to" },
        properties = {
          action = { type = "string", const = "check_code" }, approved = { type = "boolean" },
          status = { type = "string" }, sid = { type = "string" }, to = { type = "string" },
          channel = { type = "string" },
        } },
    },
  },
  annotations = T.WRITE,
  -- the rules across fields (each action's own arguments are checked by the registry)
  check = function(args)
    local email = is_email(args.to)
    if not email and not T.is_e164(args.to) then
      return nil, ("`to` must be a phone number in E.164 format, like +14155550123, or an email address (got %q)")
        :format(args.to)
    end
    if args.action == "send_code" then
      if args.channel == "email" and not email then
        return nil, "`channel` \"email\" needs `to` to be an email address; for a phone number use sms, call"
          .. " or whatsapp"
      end
      if args.channel ~= "email" and email then
        return nil, ("`channel` \"%s\" needs `to` to be a phone number in E.164 format; for an email address use"
          .. " channel \"email\""):format(args.channel)
      end
    end
    return true
  end,
}
