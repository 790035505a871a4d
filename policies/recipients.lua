-- Recipients and limits, before anything is sent:
--  * E.164 only, in an allowed country (default: the countries of the
--    tenant's own numbers), never premium-rate or short codes;
--  * recipients that opted out (Twilio 21610 once) are refused locally;
--  * at most `per_recipient` sends to one number per `window_seconds`;
--  * at most `daily_budget` sends per tenant per day (UTC).
local per_recipient = settings.per_recipient or 3
local window = settings.window_seconds or 600
local daily_budget = settings.daily_budget or 1000
local premium = settings.premium_prefixes or { "+1900", "+1976", "+4487", "+4490", "+4491", "+4470",
  "+3389", "+3481", "+3480", "+3989", "+4990", "+4319", "+6119" }

-- Country calling codes: 1 digit (1, 7), 2 digits, or else 3 digits.
local two_digit = { ["20"] = true, ["27"] = true, ["30"] = true, ["31"] = true, ["32"] = true, ["33"] = true,
  ["34"] = true, ["36"] = true, ["39"] = true, ["40"] = true, ["41"] = true, ["43"] = true, ["44"] = true,
  ["45"] = true, ["46"] = true, ["47"] = true, ["48"] = true, ["49"] = true, ["51"] = true, ["52"] = true,
  ["53"] = true, ["54"] = true, ["55"] = true, ["56"] = true, ["57"] = true, ["58"] = true, ["60"] = true,
  ["61"] = true, ["62"] = true, ["63"] = true, ["64"] = true, ["65"] = true, ["66"] = true, ["81"] = true,
  ["82"] = true, ["84"] = true, ["86"] = true, ["90"] = true, ["91"] = true, ["92"] = true, ["93"] = true,
  ["94"] = true, ["95"] = true, ["98"] = true }

local function country(number)
  local digits = number:sub(2)
  local first = digits:sub(1, 1)
  if first == "1" or first == "7" then return first end
  if two_digit[digits:sub(1, 2)] then return digits:sub(1, 2) end
  return digits:sub(1, 3)
end

return {
  name = "recipients",
  priority = 17,
  tools = { "twilio_send_sms", "twilio_send_whatsapp", "twilio_verify_phone" },
  writes_only = true,
  check = function(call)
    local to = call.args.to
    if to:find("@", 1, true) then return allow() end -- a verification email
    if not to:match("^%+[1-9]%d+$") or #to < 9 or #to > 16 then
      return deny("the recipient must be a full E.164 number (short codes and local formats are refused)")
    end
    for _, prefix in ipairs(premium) do
      if to:sub(1, #prefix) == prefix then
        return deny("the recipient is a premium-rate number")
      end
    end
    local allowed = {}
    for _, c in ipairs(settings.countries or {}) do allowed[c] = true end
    if not settings.countries and call.connection then
      for _, own in ipairs(call.connection.numbers) do allowed[country(own)] = true end
    end
    if next(allowed) and not allowed[country(to)] then
      return deny(("sending to country code +%s is not allowed for this tenant"):format(country(to)))
    end
    if call.opted_out(to) then
      return deny("the recipient opted out of messages from this tenant (they replied STOP); do not retry")
    end
    if call.recent_sends(to, window) >= per_recipient then
      return deny(("at most %d sends to one recipient per %d minutes; wait before sending again")
        :format(per_recipient, window // 60))
    end
    if call.sends_today() >= daily_budget then
      return deny(("the tenant's daily budget of %d sends is used up"):format(daily_budget))
    end
    return allow()
  end,
}
