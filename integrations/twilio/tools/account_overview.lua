-- twilio_account_overview: the account (never its auth token), its phone
-- numbers, and usage with costs per category over a date range.
local json = require("switchboard.json")
local T = require("integrations.twilio.common")
local connection = require("integrations.twilio.connection")

local CATEGORIES = { "sms", "sms-outbound", "sms-inbound", "calls", "calls-outbound", "calls-inbound",
                     "phonenumbers", "recordings", "totalprice" }
local KNOWN = {}
for _, k in ipairs(CATEGORIES) do KNOWN[k] = true end

local function dates(args)
  return args.start_date or T.month_start(), args.end_date or T.today()
end

local function account_info(ctx)
  local c = ctx.twilio
  local a, err = c:get("api", ("/%s/Accounts/%s.json"):format("2010-04-01", c.account_sid))
  if not a then
    local over = { [20003] = {
      message = "This API key cannot read the account itself (a Standard key is refused on /Accounts, or the key"
        .. " was revoked).",
      hint = "Phone numbers and usage may still work: use action list_phone_numbers or usage_summary. If those fail"
        .. " too, an operator must check the connection with `switchboard admin twilio test`." } }
    over[401] = over[20003]
    local e = T.failure(err, over)
    e.data.account_sid = c.account_sid
    e.data.name = ctx.connection.account_name
    return nil, e
  end
  local data = { action = "account_info", sid = T.str(a.sid) or c.account_sid, name = T.str(a.friendly_name),
                 status = T.str(a.status), type = T.str(a.type), date_created = T.time(a.date_created),
                 owner_account_sid = T.str(a.owner_account_sid) }
  -- the balance is a bonus: some keys may not read it
  local b = c:get("api", c:acct("Balance.json"))
  if b then
    data.balance = T.num(b.balance)
    data.currency = T.str(b.currency)
  end
  local text = ("Account %s (%s): status %s, type %s"):format(data.name or "(unnamed)", data.sid,
    data.status or "unknown", data.type or "unknown")
  if data.balance then text = text .. (", balance %s %s"):format(data.balance, data.currency or "") end
  text = text .. "."
  if data.status and data.status ~= "active" then
    text = text .. " The account is not active: sends will fail; tell an operator."
  end
  if data.type == "Trial" then
    text = text .. " A trial account sends only to verified numbers."
  end
  return { text = text, data = data }
end

local function list_phone_numbers(ctx)
  local c = ctx.twilio
  local items, more = T.collect(c, "api", c:acct("IncomingPhoneNumbers.json"), { PageSize = 100 },
    "incoming_phone_numbers", 1000, nil, 10)
  if not items then return nil, T.failure(more) end
  local conn = ctx.connection
  local out = {}
  for i, n in ipairs(items) do
    local v = connection.number_view(n)
    v.friendly_name = T.str(v.friendly_name)
    v.sid = T.str(v.sid)
    v.phone_number = T.str(v.phone_number)
    v.status = T.str(n.status)
    v.capabilities = { voice = v.voice, sms = v.sms, mms = v.mms }
    v.voice, v.sms, v.mms = nil, nil, nil
    v.is_default = v.phone_number ~= nil and v.phone_number == conn.default_number
    out[i] = v
  end
  local parts = {}
  for _, n in ipairs(out) do
    local caps = {}
    if n.capabilities.voice then caps[#caps + 1] = "voice" end
    if n.capabilities.sms then caps[#caps + 1] = "SMS" end
    if n.capabilities.mms then caps[#caps + 1] = "MMS" end
    parts[#parts + 1] = ("%s (%s)%s"):format(n.phone_number or "?", #caps > 0 and table.concat(caps, ", ") or "no"
      .. " capabilities", n.is_default and " [default sender]" or "")
  end
  local text = ("The account has %s%s"):format(T.plural(#out, "phone number"),
    #parts > 0 and (": " .. table.concat(parts, "; ") .. ".") or ".")
  if more then text = text .. " Only the first 1000 are shown." end
  if not conn.default_number then
    text = text .. " No default SMS number is configured for sending."
  end
  return { text = text, data = { action = "list_phone_numbers", count = #out, more = more,
                                 default_number = conn.default_number, whatsapp_number = conn.whatsapp_number,
                                 numbers = json.array(out) } }
end

local function usage_summary(ctx, args)
  local c = ctx.twilio
  local start_date, end_date = dates(args)
  local q = { StartDate = start_date, EndDate = end_date, PageSize = args.category and 50 or 1000 }
  q.Category = args.category
  local keep = function(r)
    local cat = T.str(r.category)
    if args.category then return cat == args.category end
    return cat ~= nil and KNOWN[cat] == true
  end
  local items, err = T.collect(c, "api", c:acct("Usage/Records.json"), q, "usage_records", #CATEGORIES, keep, 3)
  if not items then return nil, T.failure(err) end
  local seen, out = {}, {}
  for _, r in ipairs(items) do
    local cat = T.str(r.category)
    if not seen[cat] then
      seen[cat] = true
      out[#out + 1] = { category = cat, description = T.str(r.description), count = T.num(r.count),
                        count_unit = T.str(r.count_unit), usage = T.num(r.usage), usage_unit = T.str(r.usage_unit),
                        price = T.num(r.price), price_unit = T.str(r.price_unit),
                        start_date = T.str(r.start_date) or start_date, end_date = T.str(r.end_date) or end_date }
    end
  end
  table.sort(out, function(a, b)
    return (a.category or "") < (b.category or "")
  end)
  local parts = {}
  for _, r in ipairs(out) do
    local s = r.category
    if r.category ~= "totalprice" and r.count then s = s .. ": " .. r.count .. " " .. (r.count_unit or "") end
    if r.price then s = s .. (r.category == "totalprice" and ": " or ", ") .. r.price .. " " .. (r.price_unit or "") end
    parts[#parts + 1] = (s:gsub("%s+$", ""))
  end
  local text = ("Usage from %s to %s%s: %s."):format(start_date, end_date,
    args.category and (" for " .. args.category) or "",
    #parts > 0 and table.concat(parts, "; ") or "no usage recorded")
  return { text = text, data = { action = "usage_summary", start_date = start_date, end_date = end_date,
                                 category = args.category, records = json.array(out) } }
end

return {
  name = "twilio_account_overview",
  title = "Twilio account overview",
  description = "Reads the Twilio account. action \"account_info\": name, status, type and balance."
    .. " action \"list_phone_numbers\": the account's numbers with their voice/SMS/MMS capabilities."
    .. " action \"usage_summary\": counts and costs per category (sms, sms-outbound, sms-inbound, calls,"
    .. " calls-outbound, calls-inbound, phonenumbers, recordings, totalprice) from start_date (default the first"
    .. " day of this month) to end_date (default today), dates as YYYY-MM-DD. Check usage before large outreach.",
  actions = {
    account_info = { handler = account_info },
    list_phone_numbers = { handler = list_phone_numbers },
    usage_summary = {
      schema = { properties = {
        category = { type = "string", enum = CATEGORIES,
                     description = "usage_summary: one category; without it, all of these categories." },
        start_date = { type = "string", format = "date",
                       description = "usage_summary: first day, YYYY-MM-DD (default the first day of this month,"
                         .. " UTC)." },
        end_date = { type = "string", format = "date",
                     description = "usage_summary: last day, YYYY-MM-DD, inclusive (default today, UTC)." },
      } },
      handler = usage_summary,
    },
  },
  -- one shape per action, told apart by `action`
  output_schema = {
    type = "object",
    oneOf = {
      { type = "object", additionalProperties = false, required = { "action", "sid" },
        properties = {
          action = { type = "string", const = "account_info" },
          sid = { type = "string" }, name = { type = "string" }, status = { type = "string" },
          type = { type = "string" }, date_created = { type = "string" }, owner_account_sid = { type = "string" },
          balance = { type = "number" }, currency = { type = "string" },
        } },
      { type = "object", additionalProperties = false, required = { "action", "count", "more", "numbers" },
        properties = {
          action = { type = "string", const = "list_phone_numbers" },
          count = { type = "integer" }, more = { type = "boolean" },
          default_number = { type = "string" }, whatsapp_number = { type = "string" },
          numbers = { type = "array", items = { ["$ref"] = "#/$defs/number" } },
        } },
      { type = "object", additionalProperties = false, required = { "action", "start_date", "end_date", "records" },
        properties = {
          action = { type = "string", const = "usage_summary" },
          start_date = { type = "string" }, end_date = { type = "string" }, category = { type = "string" },
          records = { type = "array", items = { ["$ref"] = "#/$defs/usage_record" } },
        } },
    },
    ["$defs"] = {
      number = { type = "object", additionalProperties = false, required = { "capabilities", "is_default" },
        properties = {
          phone_number = { type = "string" }, friendly_name = { type = "string" }, sid = { type = "string" },
          status = { type = "string" }, is_default = { type = "boolean" },
          capabilities = { type = "object", additionalProperties = false, required = { "voice", "sms", "mms" },
                           properties = { voice = { type = "boolean" }, sms = { type = "boolean" },
                                          mms = { type = "boolean" } } },
        } },
      usage_record = { type = "object", additionalProperties = false,
        required = { "category", "start_date", "end_date" },
        properties = {
          category = { type = "string" }, description = { type = "string" }, count = { type = "number" },
          count_unit = { type = "string" }, usage = { type = "number" }, usage_unit = { type = "string" },
          price = { type = "number" }, price_unit = { type = "string" }, start_date = { type = "string" },
          end_date = { type = "string" },
        } },
    },
  },
  annotations = T.READ,
  check = function(args)
    if args.action == "usage_summary" then
      local s, e = dates(args)
      if s > e then
        return nil, ("`start_date` (%s) is after `end_date` (%s)%s"):format(s, e,
          args.end_date and "" or " (today, the default)")
      end
    end
    return true
  end,
}
