-- Safety Gateway: before an SMS, a WhatsApp message or a verification code
-- goes out, look through everything that would be sent (the body, each
-- template variable, the media URL, the recipient) for secrets, payment
-- card numbers, IBANs, US Social Security numbers, email addresses and phone
-- numbers (the detectors are in lua/switchboard/detect.lua). Secrets are
-- well-known key formats and any secret given with its name ("the API key
-- is …", "token=…" followed by a high-entropy token).
--
-- What happens for each kind of finding is set in the config:
--   policy_settings = { safety_gateway = { email = "allow", card = "block" } }
-- allow = send; flag = send and mark the audit record; hold = do not send,
-- a person reviews it; block = refuse. When several things are found the
-- strictest action wins. The agent is told what was found and where, never
-- the value itself.
-- luacheck: read globals detect

local DEFAULTS = { secret = "block", card = "hold", iban = "hold", ssn = "hold",
                   email = "flag", phone = "flag" }
local ORDER = { "secret", "card", "iban", "ssn", "email", "phone" }
local WHAT = {
  secret = "what looks like a secret (an API key, private key or access token)",
  card = "what looks like a payment card number",
  iban = "what looks like a bank account number (IBAN)",
  ssn = "what looks like a US Social Security number",
  email = "an email address",
  phone = "a phone number",
}
local SEVERITY = { allow = 0, flag = 1, hold = 2, block = 3 }

-- The action for each category, checked when the policy loads.
local action = {}
for name in pairs(settings) do
  if not DEFAULTS[name] then
    error(("settings: unknown category '%s' (known: %s)"):format(tostring(name), table.concat(ORDER, ", ")))
  end
end
for _, category in ipairs(ORDER) do
  local a = settings[category] or DEFAULTS[category]
  if not SEVERITY[a] then
    error(("settings.%s: must be allow, flag, hold or block"):format(category))
  end
  action[category] = a
end

-- Every text that would be sent (call.outbound, from the tool's `sends`
-- declaration), with where it is and what not to act on there: the
-- recipient is a phone number or an email address by its nature.
local function outbound(call)
  local texts = {}
  for _, o in ipairs(call.outbound or {}) do
    local where = o.where
    if o.part == "value" then
      local name = o.name
      where = (#name <= 32 and name:match("^[%w_]+$") and #detect.scan(name) == 0)
        and (o.where .. " '" .. name .. "'") or ("a " .. o.where)
    end
    texts[#texts + 1] = { text = o.text, where = where, ignore = {} }
  end
  if call.recipient then
    texts[#texts + 1] = { text = call.recipient, where = "the recipient", ignore = { phone = true, email = true } }
  end
  return texts
end

return {
  name = "safety_gateway",
  priority = 15,
  kinds = { "sends" },
  description = "Holds, flags or refuses outbound texts that contain secrets, card numbers, IBANs, SSNs,"
    .. " email addresses or phone numbers.",
  check = function(call)
    local worst, findings = "allow", {}
    for _, t in ipairs(outbound(call)) do
      local found, what = detect.categories(t.text), {}
      for _, category in ipairs(ORDER) do
        if found[category] and not t.ignore[category] and action[category] ~= "allow" then
          what[#what + 1] = WHAT[category]
          if SEVERITY[action[category]] > SEVERITY[worst] then worst = action[category] end
        end
      end
      if #what > 0 then findings[#findings + 1] = t.where .. " contains " .. table.concat(what, " and ") end
    end
    local reason = table.concat(findings, "; ")
    if worst == "block" then
      return deny(reason .. "; remove it before sending")
    elseif worst == "hold" then
      return hold(reason)
    elseif worst == "flag" then
      return flag(reason)
    end
    return allow()
  end,
}
