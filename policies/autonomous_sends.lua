-- Autonomous sends: while a tenant's switch is off (the default), messages
-- and verification codes do not go out on an agent's word alone. The call
-- becomes an escalation; a person approves it (and it runs once) or not.
-- Turn the switch on with `switchboard admin twilio autonomous-sends on`.
return {
  name = "autonomous_sends",
  priority = 20,
  tools = { "twilio_send_sms", "twilio_send_whatsapp", "twilio_verify_phone" },
  writes_only = true, -- twilio_verify_phone check_code reads, so it passes
  check = function(call)
    if call.connection and call.connection.autonomous_sends then
      return allow()
    end
    return escalate("autonomous sends are disabled for this tenant, so nothing was sent;"
      .. " a person must approve this message")
  end,
}
