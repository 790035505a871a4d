-- luacheck: read globals phone
-- Untrusted content: once an execution has read text third parties wrote
-- (inbound message bodies, caller names, media URLs: call.tainted), a send
-- goes out on the agent's word only when the trusted side chose its
-- recipient:
--   * the counterpart of what was read (the sender of an inbound message,
--     the number whose caller name was looked up): answering them is fine;
--   * a number in the tenant's `contacts` (an allow-list);
--   * with `allow_previous_recipients = true`, a number the tenant has
--     sent to before (a send the provider accepted).
-- Any other recipient: `action` (default hold, so a person decides), with
-- a reason naming what was read and from whom.
-- A number or a link that appeared in untrusted text and appears in the
-- send (as the recipient, in the body, a template variable or the media
-- URL) is `mention_action` (default hold) whoever the recipient is, in
-- the look-alike forms too (other-script and full-width digits, invisible
-- characters, spaces, dashes, with or without +1).
--   policy_settings = { untrusted_content = { contacts = { "+14155550123" },
--     allow_previous_recipients = false, action = "hold", mention_action = "hold" } }
-- action and mention_action: "hold", "deny" or "flag" (send, and mark it).
local KNOWN = { contacts = true, allow_previous_recipients = true, action = true, mention_action = true }
for k in pairs(settings) do
  if not KNOWN[k] then
    error(("settings: unknown key '%s' (known: contacts, allow_previous_recipients, action, mention_action)")
      :format(tostring(k)))
  end
end
local ACTIONS = { hold = hold, deny = deny, flag = flag }
local act = ACTIONS[settings.action or "hold"]
local mention_act = ACTIONS[settings.mention_action or "hold"]
if not act then error("settings.action: must be hold, deny or flag") end
if not mention_act then error("settings.mention_action: must be hold, deny or flag") end
local contacts = {}
for i, n in ipairs(settings.contacts or {}) do
  local p = phone(tostring(n))
  if not (p and p.e164) then error(("settings.contacts[%d]: '%s' is not a number in E.164 form"):format(i, tostring(n))) end
  contacts[p.e164] = true
end
local previous = settings.allow_previous_recipients == true

-- "search_messages read 2 untrusted fields from +15550001111, +15550002222"
local function summary(t)
  local tools, from, seen = {}, {}, {}
  for _, s in ipairs(t.sources) do
    if not seen[s.tool] then seen[s.tool] = true tools[#tools + 1] = s.tool end
    if s.from and not seen[s.from] then
      seen[s.from] = true
      if #from < 5 then from[#from + 1] = s.from end
    end
  end
  local text = ("this execution read %d untrusted field%s (%s)"):format(t.count, t.count == 1 and "" or "s",
    table.concat(tools, ", "))
  if #from > 0 then text = text .. " from " .. table.concat(from, ", ") end
  return text
end

local function sent_text(call)
  local out = { { call.recipient, "the recipient" } }
  for _, o in ipairs(call.outbound or {}) do
    if o.part ~= "name" then
      out[#out + 1] = { o.text, o.part == "value" and ("a " .. o.where) or o.where }
    end
  end
  return out
end

return {
  name = "untrusted_content",
  priority = 16,
  kinds = { "sends" },
  description = "Holds sends of an execution that read third-party text, unless the recipient is one the"
    .. " trusted side chose.",
  check = function(call)
    local t = call.tainted
    if not t then return allow() end
    for _, item in ipairs(sent_text(call)) do
      local found = type(item[1]) == "string" and call.untrusted_mention(item[1])
      if found then
        return mention_act(("%s contains %s, which came from untrusted text (%s); a send it may have asked"
          .. " for needs a person"):format(item[2], found, summary(t)))
      end
    end
    if t.truncated then
      return act(("%s, more than can be checked against this send"):format(summary(t)))
    end
    local to = call.recipient
    for _, n in ipairs(t.counterparts) do
      if n == to then return allow() end
    end
    if contacts[to] then return allow() end
    if previous and call.sent_before and call.sent_before(to) then return allow() end
    return act(("%s, and %s is not who wrote it, not a contact and not chosen by the tenant; a person must"
      .. " confirm this send"):format(summary(t), to))
  end,
}
