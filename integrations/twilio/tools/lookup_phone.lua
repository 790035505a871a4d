-- twilio_lookup_phone: Lookup v2 for one number. An invalid number is an
-- answer (valid: false with the reasons), not an error; a package's own
-- error is reported for that package alone.
local json = require("switchboard.json")
local T = require("integrations.twilio.common")

local FIELDS = { "line_type_intelligence", "caller_name", "sim_swap", "identity_match", "reassigned_number" }

-- Each package's answer, kept short; nil values drop out.
local shape = {
  line_type_intelligence = function(p)
    return { type = T.str(p.type), carrier_name = T.str(p.carrier_name),
             mobile_country_code = T.str(p.mobile_country_code), mobile_network_code = T.str(p.mobile_network_code) }
  end,
  caller_name = function(p)
    return { caller_name = T.str(p.caller_name), caller_type = T.str(p.caller_type) }
  end,
  sim_swap = function(p)
    local last = T.table(p.last_sim_swap) or {}
    return { last_sim_swap_date = T.time(last.last_sim_swap_date), swapped_period = T.str(last.swapped_period),
             swapped_in_period = T.bool(last.swapped_in_period), carrier_name = T.str(p.carrier_name) }
  end,
  identity_match = function(p)
    local out = { summary_score = T.num(p.summary_score), error_message = T.str(p.error_message) }
    for _, k in ipairs({ "first_name_match", "last_name_match", "address_line_match", "city_match",
                         "state_match", "postal_code_match", "address_country_match", "national_id_match",
                         "date_of_birth_match" }) do
      out[k] = T.str(p[k])
    end
    return out
  end,
  reassigned_number = function(p)
    return { last_verified_date = T.str(p.last_verified_date), is_number_reassigned = T.str(p.is_number_reassigned) }
  end,
}

-- A package's answer: its fields, or the package's own error.
local function package_schema(props)
  return { oneOf = { { type = "object", additionalProperties = false, properties = props },
                     { ["$ref"] = "#/$defs/package_error" } } }
end

local function strings(names)
  local p = {}
  for _, n in ipairs(names) do p[n] = { type = "string" } end
  return p
end

local IDENTITY = strings({ "error_message", "first_name_match", "last_name_match", "address_line_match",
                           "city_match", "state_match", "postal_code_match", "address_country_match",
                           "national_id_match", "date_of_birth_match" })
IDENTITY.summary_score = { type = "number" }

local function summary(data, requested, errors)
  local parts = {}
  if data.valid == false then
    local why = #errors > 0 and table.concat(errors, ", ") or "no reason given"
    parts[1] = ("%s is not a valid phone number (%s). Do not send to it; ask for the correct number.")
      :format(data.phone_number, why)
    return table.concat(parts, " ")
  end
  parts[1] = ("%s is a valid number%s%s."):format(data.phone_number,
    data.country_code and (" in " .. data.country_code) or "",
    data.national_format and (" (" .. data.national_format .. ")") or "")
  for _, f in ipairs(requested) do
    local p = data[f]
    if p and p.error_code then
      parts[#parts + 1] = ("%s: not available (error %d: %s)"):format(f, p.error_code, p.error_explanation)
    elseif p and f == "line_type_intelligence" then
      local s = ("Line type: %s"):format(p.type or "unknown")
      if p.carrier_name then s = s .. ", carrier " .. p.carrier_name end
      if p.type == "landline" then s = s .. " (a landline cannot receive SMS)" end
      parts[#parts + 1] = s .. "."
    elseif p and f == "caller_name" then
      parts[#parts + 1] = ("Caller name: %s (%s)."):format(p.caller_name or "unknown", p.caller_type or "unknown type")
    elseif p and f == "sim_swap" then
      local swap = "no recent swap reported"
      if p.last_sim_swap_date then
        swap = "last swapped " .. p.last_sim_swap_date
      elseif p.swapped_in_period == true then
        swap = "swapped within " .. (p.swapped_period or "the period")
      end
      parts[#parts + 1] = ("SIM swap: %s."):format(swap)
    elseif p and f == "identity_match" then
      parts[#parts + 1] = ("Identity match score: %s."):format(p.summary_score or "unknown")
    elseif p and f == "reassigned_number" then
      parts[#parts + 1] = ("Reassigned since last verified: %s."):format(p.is_number_reassigned or "unknown")
    elseif not p then
      parts[#parts + 1] = ("%s: no data returned."):format(f)
    end
  end
  return table.concat(parts, " ")
end

return {
  name = "twilio_lookup_phone",
  title = "Look up a phone number",
  description = "Checks a phone number with Twilio Lookup: whether it is valid (and why not), its national"
    .. " format and country, and the requested data packages: line_type_intelligence (mobile, landline, VoIP,"
    .. " carrier; the default), caller_name, sim_swap, identity_match, reassigned_number. Use it before texting"
    .. " an unfamiliar number. Read-only; some packages are billed per lookup.",
  input_schema = {
    type = "object",
    properties = {
      phone_number = { type = "string", format = "e164-syntax", description = "The number in E.164 form, like +14155550123." },
      fields = { type = "array", items = { type = "string", enum = FIELDS }, uniqueItems = true, maxItems = 5,
                 default = { "line_type_intelligence" },
                 description = "Data packages to add; default [\"line_type_intelligence\"]. An empty list checks"
                   .. " only validity and format." },
    },
    required = { "phone_number" },
    additionalProperties = false,
  },
  output_schema = {
    type = "object",
    additionalProperties = false,
    required = { "phone_number", "valid", "validation_errors", "fields", "package_errors" },
    properties = {
      phone_number = { type = "string" },
      valid = { type = "boolean" },
      validation_errors = { type = "array", items = { type = "string" } },
      national_format = { type = "string" },
      country_code = { type = "string" },
      calling_country_code = { type = "string" },
      fields = { type = "array", items = { type = "string", enum = FIELDS } },
      line_type_intelligence = package_schema(strings({ "type", "carrier_name", "mobile_country_code",
                                                        "mobile_network_code" })),
      caller_name = package_schema(strings({ "caller_name", "caller_type" })),
      sim_swap = package_schema({ last_sim_swap_date = { type = "string" }, swapped_period = { type = "string" },
                                  swapped_in_period = { type = "boolean" }, carrier_name = { type = "string" } }),
      identity_match = package_schema(IDENTITY),
      reassigned_number = package_schema(strings({ "last_verified_date", "is_number_reassigned" })),
      package_errors = { type = "array", items = { type = "object", additionalProperties = false,
        required = { "field", "error_code", "explanation" },
        properties = { field = { type = "string", enum = FIELDS }, error_code = { type = "integer" },
                       explanation = { type = "string" } } } },
    },
    ["$defs"] = {
      package_error = { type = "object", additionalProperties = false, required = { "error_code", "error_explanation" },
                        properties = { error_code = { type = "integer" }, error_explanation = { type = "string" } },
                        description = "The package could not be answered for this number." },
    },
  },
  annotations = T.READ,
  writes = false,
  -- Third-party text (switchboard.taint): the caller name (CNAM) is set by
  -- whoever holds the number.
  untrusted = { { "caller_name.caller_name", from = "phone_number" } },
  handler = function(ctx, args)
    local c = ctx.twilio
    local requested = args.fields or { "line_type_intelligence" }
    local q = {}
    if #requested > 0 then q.Fields = table.concat(requested, ",") end
    local body, err = c:get("lookups", "/v2/PhoneNumbers/" .. T.escape(args.phone_number), q)
    if not body and err.status == 404 then
      -- Lookup v1 answered unknown numbers with 404: the same answer as v2's valid = false
      body = { phone_number = args.phone_number, valid = false, validation_errors = { "NOT_FOUND" } }
    elseif not body then
      return nil, T.failure(err)
    end
    local errors = {}
    for _, e in ipairs(T.table(body.validation_errors) or {}) do
      if type(e) == "string" then errors[#errors + 1] = e end
    end
    local valid = T.bool(body.valid)
    if valid == nil then valid = #errors == 0 end
    local data = {
      phone_number = T.str(body.phone_number) or args.phone_number, valid = valid,
      validation_errors = json.array(errors), national_format = T.str(body.national_format),
      country_code = T.str(body.country_code), calling_country_code = T.str(body.calling_country_code),
      fields = json.array(requested),
    }
    local package_errors = {}
    if valid then
      for _, f in ipairs(requested) do
        local p = T.table(body[f])
        if p then
          local view = shape[f](p)
          local code = T.int(p.error_code)
          if code then
            view = { error_code = code, error_explanation = T.explain(code) }
            package_errors[#package_errors + 1] = { field = f, error_code = code, explanation = T.explain(code) }
          end
          data[f] = view
        end
      end
    end
    data.package_errors = json.array(package_errors)
    return { text = summary(data, valid and requested or {}, errors), data = data }
  end,
}
