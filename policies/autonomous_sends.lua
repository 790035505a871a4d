-- Autonomous sends: while a tenant's switch is off (the default), messages
-- and verification codes do not go out on an agent's word alone. The call
-- becomes an escalation; a person approves it (and it runs once) or not.
-- The switch is each connection's: `switchboard admin <integration>
-- autonomous-sends on`. It applies to every call that sends, whatever the
-- integration (an action that only reads, such as checking a code, passes).
return {
  name = "autonomous_sends",
  priority = 20,
  kinds = { "sends" },
  check = function(call)
    if call.connection and call.connection.autonomous_sends then
      return allow()
    end
    return escalate("autonomous sends are disabled for this tenant, so nothing was sent;"
      .. " a person must approve this message")
  end,
}
