-- Authorization tiers: who an agent may act for. The sender tier comes
-- from the agent's default or, for trusted orchestrators, from
-- _meta["io.switchboard/sender"]; unknown means external.
-- settings.serves: agent type -> the tiers it serves.
local serves = settings.serves or {
  caioo = { "owner", "admin", "vip" },
  personal_assistant = { "owner", "admin", "internal" },
}

return {
  name = "authorization_tiers",
  priority = 5,
  -- every tool of an integration (settings.tools: these tools instead)
  tools = settings.tools,
  kinds = not settings.tools and { "connected" } or nil,
  check = function(call)
    local tiers = serves[call.agent.type] or {}
    for _, tier in ipairs(tiers) do
      if call.sender == tier then return allow() end
    end
    return deny(("a %s agent acts only for %s senders; this request came from a %s sender")
      :format(call.agent.type, table.concat(tiers, ", "), call.sender))
  end,
}
