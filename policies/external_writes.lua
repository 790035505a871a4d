-- An external sender (someone the agent serves but the tenant does not
-- know) never triggers a tool that writes: sends, codes, changes.
return {
  name = "external_writes",
  priority = 10,
  writes_only = true,
  description = "Refuses write actions on behalf of external senders.",
  check = function(call)
    if call.sender == "external" then
      return deny("write actions need a known sender; this request came from an external sender")
    end
    return allow()
  end,
}
