-- email_send: one plain-text message from the tenant's sender address to
-- one address, through the pipeline's write-ahead send (ctx.send). Never
-- resent: an unknown outcome is reported as such.
local function failure(err, to)
  if err.not_sent then -- the pipeline's own account (cancelled, storage)
    return { message = err.message .. ".", data = { outcome = "failed" } }
  end
  if err.unknown then
    return { message = ("The outcome is unknown: the request reached SendGrid but no answer came back (%s)."
               .. " The message may have been sent."):format(err.transport or err.message),
             hint = ("Do not resend. Check with email_search (to = %s) whether it went out."):format(to),
             data = { outcome = "unknown" }, outcome = "unknown", audit = { error = err.transport or err.message } }
  end
  local hint = "Check the arguments; do not retry unchanged."
  if err.status == 401 or err.status == 403 then
    hint = "Do not retry: an operator must check the connection with `switchboard admin email test`."
  elseif not err.status or err.status == 429 then
    hint = "Try again in a little while; if it keeps failing, tell an operator."
  end
  return { message = ("SendGrid refused the message: %s%s."):format(err.message,
             err.field and (" (field " .. err.field .. ")") or ""), code = err.status, hint = hint,
           data = { outcome = "failed" }, outcome = "failed",
           audit = { http_status = err.status, error = err.message, field = err.field } }
end

return {
  name = "email_send",
  title = "Send an email",
  description = "Sends one plain-text email from the tenant's sender address to one recipient. Cannot be undone:"
    .. " send once, never retry after an unknown outcome. Returns SendGrid's message id (accepted is not delivered).",
  input_schema = {
    type = "object",
    properties = {
      to = { type = "string", format = "email", description = "The recipient's address, like ana@example.com." },
      subject = { type = "string", minLength = 1, maxLength = 200, description = "The subject line." },
      body = { type = "string", minLength = 1, maxLength = 20000, description = "The message, plain text." },
    },
    required = { "to", "subject", "body" },
    additionalProperties = false,
  },
  output_schema = {
    type = "object", additionalProperties = false, required = { "to", "from", "outcome" },
    properties = { message_id = { type = "string" }, to = { type = "string" }, from = { type = "string" },
                   subject = { type = "string" }, outcome = { type = "string", const = "sent" } },
  },
  annotations = { readOnlyHint = false, destructiveHint = false, idempotentHint = false, openWorldHint = true },
  writes = true,
  sends = { recipient = "to", texts = { { "subject", "the subject" }, { "body", "the message body" } } },
  check = function(args)
    -- one recipient, one spelling: the limits count sends per address
    args.to = args.to:lower()
    if not args.subject:find("%S") then return nil, "`subject` must contain some text, not only spaces" end
    if args.subject:find("[\r\n]") then return nil, "`subject` must be one line (no line breaks)" end
    if not args.body:find("%S") then return nil, "`body` must contain some text, not only spaces" end
    return true
  end,
  handler = function(ctx, args)
    local from = ctx.connection.from_address
    local payload = {
      personalizations = { { to = { { email = args.to } } } },
      from = { email = from, name = ctx.connection.from_name },
      subject = args.subject,
      content = { { type = "text/plain", value = args.body } },
    }
    local sent, err = ctx.send({
      request = { to = args.to, from = from, subject = args.subject }, text = args.body, ref = "message_id",
      post = function() return ctx.email:send(payload) end,
    })
    if not sent then return nil, failure(err, args.to) end
    local data = { message_id = sent.message_id, to = args.to, from = from, subject = args.subject, outcome = "sent" }
    return { text = ("Email to %s from %s was accepted by SendGrid (message id %s). Accepted is not delivered;"
               .. " do not send it again."):format(args.to, from, tostring(sent.message_id or "not given")),
             data = data, outcome = "sent", audit = { message_id = sent.message_id } }
  end,
}
