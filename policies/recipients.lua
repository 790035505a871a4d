-- Recipients and limits, before anything is sent:
--  * a valid E.164 number (libphonenumber, through phone()), in an allowed
--    country (default: the countries of the tenant's own numbers), never of
--    a refused type (default: premium-rate and shared-cost) nor under one
--    of the operator's extra `premium_prefixes`;
--  * recipients that opted out (the provider said so once) are refused locally;
--  * at most `per_recipient` sends to one number per `window_seconds`;
--  * at most `daily_budget` sends per tenant per day (UTC).
-- luacheck: read globals phone
local per_recipient = settings.per_recipient or 3
local window = settings.window_seconds or 600
local daily_budget = settings.daily_budget or 1000
local prefixes = settings.premium_prefixes or {}

-- libphonenumber's number types (phone(n).type)
local TYPES = { "fixed_line", "mobile", "fixed_line_or_mobile", "toll_free", "premium_rate", "shared_cost",
  "voip", "personal_number", "pager", "uan", "voicemail", "unknown" }
local refused = {}
for _, t in ipairs(settings.refused_types or { "premium_rate", "shared_cost" }) do
  local known = false
  for _, k in ipairs(TYPES) do known = known or k == t end
  if not known then
    error(("refused_types: unknown number type '%s' (known: %s)"):format(tostring(t), table.concat(TYPES, ", ")))
  end
  refused[t] = true
end

-- `countries`: regions ("US", "GB") or whole country calling codes ("1", "+44").
local allowed_regions, allowed_codes = {}, {}
for _, c in ipairs(settings.countries or {}) do
  c = tostring(c)
  if c:match("^%u%u$") then allowed_regions[c] = true
  elseif c:match("^%+?%d+$") then allowed_codes[tonumber((c:gsub("^%+", "")))] = true
  else error(("countries: '%s' is neither a region like \"US\" nor a calling code like \"1\""):format(c))
  end
end

-- Without `countries`: the regions of the tenant's own numbers, as the
-- runtime computed them once per connection (call.connection.countries),
-- or from the numbers themselves (each parsed once).
local region_of = {}
local function own_countries(conn)
  if conn.countries then return conn.countries end
  local out = {}
  for _, own in ipairs(conn.numbers or {}) do
    if region_of[own] == nil then
      local n = phone(own)
      region_of[own] = n and n.valid and n.region or false
    end
    if region_of[own] then out[#out + 1] = region_of[own] end
  end
  return out
end

local function allowed(call, number)
  if settings.countries then
    if not (next(allowed_regions) or next(allowed_codes)) then return true end
    return allowed_regions[number.region] or allowed_codes[number.country_code]
  end
  local own = call.connection and own_countries(call.connection) or {}
  if #own == 0 then return true end
  for i = 1, #own do
    if own[i] == number.region then return true end
  end
  return false
end

-- A phone number recipient: refused, with why, or nil.
local function refuse_number(call, to)
  local number = phone(to)
  if not number or not number.valid or number.e164 ~= to then
    return "the recipient must be a valid phone number in E.164 format (short codes and local formats are refused)"
  end
  if refused[number.type] then
    return ("the recipient is a %s number"):format((number.type:gsub("_", "-")))
  end
  for _, prefix in ipairs(prefixes) do
    if to:sub(1, #prefix) == prefix then
      return "the recipient is a premium-rate number"
    end
  end
  if not allowed(call, number) then
    local where = number.region == "001" and "non-geographic numbers" or number.region
    return ("sending to %s (+%d) is not allowed for this tenant"):format(where, number.country_code)
  end
  return nil
end

return {
  name = "recipients",
  priority = 17,
  kinds = { "sends" },
  check = function(call)
    local to = call.recipient
    if not to then return allow() end
    -- an email address (an email send, a verification by email) has no
    -- number checks; the limits below apply to every recipient
    if not to:find("@", 1, true) then
      local why = refuse_number(call, to)
      if why then return deny(why) end
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
