-- The simulator's lookups.twilio.com: GET /v2/PhoneNumbers/{PhoneNumber}
-- with Fields. Numbers in the fixture answer with their data; others get
-- computed answers (validity from the number's length per country).
-- Invalid numbers are HTTP 200 with valid = false, as in v2.
local json = require("switchboard.json")
local U = require("integrations.twilio.sim.util")

local M = {}

local null = json.null

-- ISO country -> calling code, national length (digits after it)
local COUNTRIES = {
  US = { "1", 10 }, CA = { "1", 10 }, GB = { "44", 10 }, DE = { "49", nil }, FR = { "33", 9 },
  ES = { "34", 9 }, IT = { "39", nil }, NL = { "31", 9 }, IE = { "353", 9 }, AU = { "61", 9 },
  NZ = { "64", nil }, IN = { "91", 10 }, BR = { "55", nil }, MX = { "52", 10 }, JP = { "81", nil },
  SG = { "65", 8 }, ZA = { "27", 9 },
}
-- calling code -> default country
local BY_CODE = {}
for iso, c in pairs(COUNTRIES) do
  if not BY_CODE[c[1]] or iso == "US" then BY_CODE[c[1]] = iso end
end

-- Every data package with its fields (all null until known).
local PACKAGES = {
  caller_name = { "caller_name", "caller_type" },
  sim_swap = { "last_sim_swap", "carrier_name", "mobile_country_code", "mobile_network_code" },
  call_forwarding = { "call_forwarding_enabled" },
  line_status = { "status" },
  line_type_intelligence = { "type", "carrier_name", "mobile_country_code", "mobile_network_code" },
  identity_match = { "first_name_match", "last_name_match", "address_lines_match", "city_match", "state_match",
                     "postal_code_match", "address_country_match", "national_id_match", "date_of_birth_match",
                     "summary_score", "error_message" },
  reassigned_number = { "last_verified_date", "is_number_reassigned" },
  sms_pumping_risk = { "carrier_risk_category", "number_blocked", "number_blocked_date",
                       "number_blocked_last_3_months", "sms_pumping_risk_score" },
  phone_number_quality_score = { "carrier_risk_score", "carrier_risk_category", "disposable_phone_risk_score",
                                 "disposable_phone_risk_category", "quality_score", "quality_category",
                                 "velocity_risk_score", "velocity_risk_category" },
  pre_fill = { "first_name", "last_name", "address_line", "country_code", "state", "postal_code" },
}
local PACKAGE_ORDER = { "caller_name", "sim_swap", "call_forwarding", "line_status", "line_type_intelligence",
                        "identity_match", "reassigned_number", "sms_pumping_risk", "phone_number_quality_score",
                        "pre_fill" }
local FIELDS = { validation = true }
for k in pairs(PACKAGES) do FIELDS[k] = true end

local function package(name, data)
  local out = { error_code = null }
  for _, f in ipairs(PACKAGES[name]) do out[f] = null end
  for k, v in pairs(data or {}) do out[k] = v end
  return out
end

-- What a number not in the fixture answers for a package.
local function default_package(name, country, params)
  if name == "line_type_intelligence" then
    return { type = "mobile", carrier_name = "Simulated Wireless", mobile_country_code = "310",
             mobile_network_code = "999" }
  elseif name == "caller_name" then
    if country ~= "US" then return { error_code = 60607 } end
    return { caller_type = "UNDETERMINED" }
  elseif name == "line_status" then
    return { status = "active" }
  elseif name == "sms_pumping_risk" then
    return { carrier_risk_category = "low", number_blocked = false, number_blocked_last_3_months = false,
             sms_pumping_risk_score = 10 }
  elseif name == "reassigned_number" then
    if country ~= "US" then return { error_code = 60607 } end
    local d = U.one(params.LastVerifiedDate)
    local iso = d and d:match("^(%d%d%d%d)(%d%d)(%d%d)$") and (d:sub(1, 4) .. "-" .. d:sub(5, 6) .. "-" .. d:sub(7, 8))
    return { last_verified_date = iso or null, is_number_reassigned = "no_data_available" }
  elseif name == "identity_match" then
    local out = { summary_score = 0 }
    for _, f in ipairs(PACKAGES.identity_match) do
      if f:match("_match$") then out[f] = "no_data_available" end
    end
    return out
  end
  -- sim_swap, call_forwarding, phone_number_quality_score, pre_fill need approval
  return { error_code = 60606 }
end

-- The E.164 form of the input and the validation errors (empty when valid).
local function normalize(raw, country)
  if raw:match("%a") then return raw, { "NOT_A_NUMBER" } end
  local s = raw:gsub("[%s%-%.%(%)]", "")
  local e164
  if s:sub(1, 1) == "+" then
    e164 = s
  elseif s:sub(1, 2) == "00" then
    e164 = "+" .. s:sub(3)
  else
    local c = COUNTRIES[(country or "US"):upper()]
    if not c then return raw, { "INVALID_COUNTRY_CODE" } end
    if c[1] == "1" and #s == 11 and s:sub(1, 1) == "1" then s = s:sub(2) end
    if c[1] ~= "1" then s = s:gsub("^0", "") end
    e164 = "+" .. c[1] .. s
  end
  local digits = e164:sub(2)
  if digits == "" or not digits:match("^%d+$") then return e164, { "NOT_A_NUMBER" } end
  if #digits > 15 then return e164, { "TOO_LONG" } end
  local code
  for len = 1, 3 do
    if BY_CODE[digits:sub(1, len)] then code = digits:sub(1, len) break end
  end
  if not code then
    if digits:sub(1, 1) == "0" then return e164, { "INVALID_COUNTRY_CODE" } end
    if #digits < 8 then return e164, { "TOO_SHORT" } end
    return e164, {}
  end
  local national = #digits - #code
  local want = COUNTRIES[BY_CODE[code]][2]
  if want then
    if national < want then return e164, { "TOO_SHORT" } end
    if national > want then return e164, { "TOO_LONG" } end
  elseif national < 6 then
    return e164, { "TOO_SHORT" }
  elseif national > 13 then
    return e164, { "TOO_LONG" }
  end
  return e164, {}, code
end

local function national_format(e164, code)
  local a, b, c = e164:match("^%+1(%d%d%d)(%d%d%d)(%d%d%d%d)$")
  if a then return ("(%s) %s-%s"):format(a, b, c) end
  if code then return "0" .. e164:sub(#code + 2) end
  return null
end

-- Is this E.164 number a valid phone number (for 21211)? A fixture entry
-- with valid = false makes it invalid.
function M.is_valid(st, number)
  if not U.is_e164(number) then return false end
  local entry = st.lookups[number]
  if entry and entry.valid ~= nil then return entry.valid == true end
  local _, errors = normalize(number)
  return #errors == 0
end

function M.route(sim, req, params)
  local st = sim.state
  local raw = req.path:match("^/v2/PhoneNumbers/([^/]+)$")
  if not raw then return U.not_found(req.path) end
  if req.method ~= "GET" then
    return U.error(405, 20004, ("Method %s not allowed on %s"):format(req.method, req.path))
  end
  raw = U.unescape(raw)
  local fields = {}
  local list = U.one(params.Fields)
  for f in (list or ""):gmatch("[^,]+") do
    f = f:match("^%s*(.-)%s*$")
    if not FIELDS[f] then
      return U.error(400, 60200, ("Invalid parameter Fields: %s"):format(f))
    end
    fields[f] = true
  end
  local country = U.one(params.CountryCode)
  local e164, errors, code = normalize(raw, country)
  local entry = st.lookups[e164] or st.lookups[raw]
  if entry and entry.valid == false then
    errors = entry.validation_errors or { "INVALID_BUT_POSSIBLE" }
  elseif entry and #errors > 0 and entry.valid == true then
    errors = {}
  end
  local out = {
    calling_country_code = null, country_code = null, phone_number = e164, national_format = null,
    valid = false, validation_errors = json.array(errors),
    url = "https://lookups.twilio.com/v2/PhoneNumbers/" .. e164,
  }
  for _, p in ipairs(PACKAGE_ORDER) do out[p] = null end
  if #errors > 0 then return U.json(200, out) end

  entry = entry or {}
  local iso = entry.country_code or (code and BY_CODE[code]) or null
  if country and code and COUNTRIES[country:upper()] and COUNTRIES[country:upper()][1] == code then
    iso = entry.country_code or country:upper()
  end
  out.valid = true
  out.validation_errors = fields.validation and json.array({}) or null
  out.country_code = iso
  out.calling_country_code = entry.calling_country_code or code or null
  out.national_format = entry.national_format or national_format(e164, code)
  for name in pairs(fields) do
    if PACKAGES[name] then
      out[name] = package(name, entry[name] or default_package(name, iso, params))
    end
  end
  return U.json(200, out)
end

return M
