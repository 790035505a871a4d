-- Tool input schemas: the JSON Schema subset tools may use, checked once at
-- load (M.check_definition), and argument validation at every call
-- (M.validate) with messages an LLM can act on.
local json = require("switchboard.json")
local phone = require("core.phone")

local M = {}

local null = json.null

-- A Twilio-style SID: prefix followed by 32 hexadecimal characters.
local function hex32(s, prefix)
  return type(s) == "string" and #s == 34 and s:sub(1, 2) == prefix and s:sub(3):match("^%x+$") ~= nil
end
M.hex32 = hex32

-- E.164: a number libphonenumber (core.phone) finds valid, written as
-- E.164 writes it (a plus and digits, no national prefix). Returns true,
-- or false and the reason.
function M.is_e164(s)
  if type(s) ~= "string" then return false, "not a string" end
  if not s:match("^%+%d+$") then return false, "not a plus followed by digits only" end
  local p, err = phone.parse(s)
  if not p then return false, err end
  if not p.valid then return false, p.reason end
  if p.e164 ~= s then return false, ("not in E.164 form, which is %s"):format(p.e164) end
  return true
end

-- Written in E.164 form, valid or not (for a lookup that asks Twilio).
local function e164_syntax(s)
  return s:match("^%+[1-9]%d+$") ~= nil and #s >= 8 and #s <= 16
end

-- Named formats: a checker and how to describe the rule to an agent.
M.formats = {
  e164 = { check = M.is_e164,
           rule = "a valid phone number in E.164 format, like +14155550123" },
  ["e164-syntax"] = { check = e164_syntax,
                      rule = "a phone number in E.164 format (a plus and 7 to 15 digits), like +14155550123" },
  email = { check = function(s)
              return #s <= 254 and s:match("^[%w%.%%%+%-_]+@[%w%-]+%.[%w%.%-]+$") ~= nil
                and not s:find("..", 1, true)
            end,
            rule = "an email address, like name@example.com" },
  date = { check = function(s)
             local y, m, d = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
             if not y then return false end
             m, d = tonumber(m), tonumber(d)
             if m < 1 or m > 12 or d < 1 then return false end
             local days = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
             local yn = tonumber(y)
             if m == 2 and (yn % 4 == 0 and (yn % 100 ~= 0 or yn % 400 == 0)) then return d <= 29 end
             return d <= days[m]
           end,
           rule = "a date as YYYY-MM-DD" },
  ["date-time"] = { check = function(s)
                      local date, rest = s:match("^(%d%d%d%d%-%d%d%-%d%d)(.*)$")
                      if not date or not M.formats.date.check(date) then return false end
                      if rest == "" then return true end
                      local h, mi, sec, tz = rest:match("^[T ](%d%d):(%d%d):?(%d*%.?%d*)(.*)$")
                      if not h or tonumber(h) > 23 or tonumber(mi) > 59 then return false end
                      if sec ~= "" and (tonumber(sec) or 99) >= 61 then return false end
                      return tz == "" or tz == "Z" or tz:match("^[%+%-]%d%d:?%d%d$") ~= nil
                    end,
                    rule = "an ISO 8601 date or date-time, like 2026-01-31 or 2026-01-31T09:00:00Z" },
  ["http-url"] = { check = function(s)
                     return s:match("^[hH][tT][tT][pP][sS]?://[^%s/?#]+[^%s]*$") ~= nil
                   end,
                   rule = "an http:// or https:// URL" },
  uri = { check = function(s) return s:match("^%a[%w%+%-%.]*:[^%s]+$") ~= nil end,
          rule = "a URI" },
}

-- Twilio-style SIDs: "sid:AC" means "AC" followed by 32 hex digits.
local function format_of(name)
  local f = M.formats[name]
  if f then return f end
  local prefix = name:match("^sid:(%u%u)$")
  if prefix then
    return { check = function(s) return hex32(s, prefix) end,
             rule = ("an identifier of %s followed by 32 hexadecimal characters"):format(prefix) }
  end
  return nil
end

local function json_type(v)
  local t = type(v)
  if v == null then return "null" end
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  if t == "table" then
    if next(v) == nil then return "object" end -- empty: either; callers allow arrays too
    if rawget(v, 1) ~= nil then return "array" end
    return "object"
  end
  return t
end

local function show(v)
  local t = json_type(v)
  if t == "string" then
    if #v > 40 then return ("a string of %d characters"):format(utf8.len(v) or #v) end
    return ("%q"):format(v)
  end
  if t == "integer" or t == "number" then return tostring(v) end
  return "a" .. (t:match("^[aeiou]") and "n " or " ") .. t
end

local function is_type(want, v)
  local t = json_type(v)
  if want == t then return true end
  if want == "number" and t == "integer" then return true end
  if want == "integer" and t == "number" then return v == math.floor(v) and v > -2^53 and v < 2^53 end
  if (want == "array" or want == "object") and type(v) == "table" and next(v) == nil then return true end
  return false
end

local function validate(s, v, path, errs)
  local name = path == "" and "arguments" or ("`%s`"):format(path)
  if s.type and not is_type(s.type, v) then
    errs[#errs + 1] = ("%s must be %s (got %s)"):format(name,
      (s.type:match("^[aeiou]") and "an " or "a ") .. s.type, show(v))
    return
  end
  if s.enum then
    local ok = false
    for _, e in ipairs(s.enum) do ok = ok or e == v end
    if not ok then
      local opts = {}
      for i, e in ipairs(s.enum) do opts[i] = ("%q"):format(tostring(e)) end
      errs[#errs + 1] = ("%s must be one of %s (got %s)"):format(name, table.concat(opts, ", "), show(v))
      return
    end
  end
  local t = json_type(v)
  if t == "string" then
    local n = utf8.len(v)
    if not n then
      errs[#errs + 1] = ("%s must be valid UTF-8 text"):format(name)
      return
    end
    if s.minLength and n < s.minLength then
      errs[#errs + 1] = ("%s must have at least %d characters (got %d)"):format(name, s.minLength, n)
    end
    if s.maxLength and n > s.maxLength then
      errs[#errs + 1] = ("%s must have at most %d characters (got %d)"):format(name, s.maxLength, n)
    end
    if s.format then
      local f = format_of(s.format)
      local ok, why = true, nil
      if f then ok, why = f.check(v) end
      if not ok then
        errs[#errs + 1] = ("%s must be %s (got %s%s)"):format(name, f.rule, show(v), why and ": " .. why or "")
      end
    end
  elseif t == "integer" or t == "number" then
    if s.minimum and v < s.minimum then
      errs[#errs + 1] = ("%s must be at least %s (got %s)"):format(name, s.minimum, v)
    end
    if s.maximum and v > s.maximum then
      errs[#errs + 1] = ("%s must be at most %s (got %s)"):format(name, s.maximum, v)
    end
  elseif type(v) == "table" and (s.type == "array" or (s.items and t == "array")) then
    local n = #v
    if s.minItems and n < s.minItems then
      errs[#errs + 1] = ("%s must have at least %d items (got %d)"):format(name, s.minItems, n)
    end
    if s.maxItems and n > s.maxItems then
      errs[#errs + 1] = ("%s must have at most %d items (got %d)"):format(name, s.maxItems, n)
    end
    if s.items then
      for i = 1, n do validate(s.items, v[i], ("%s[%d]"):format(path, i - 1), errs) end
    end
    if s.uniqueItems then
      local seen = {}
      for i = 1, n do
        local key = type(v[i]) == "table" and json.encode(v[i]) or tostring(v[i])
        if seen[key] then
          errs[#errs + 1] = ("%s must not repeat items (%s appears twice)"):format(name, show(v[i]))
          break
        end
        seen[key] = true
      end
    end
  elseif type(v) == "table" then
    local props = s.properties or {}
    for _, req in ipairs(s.required or {}) do
      if v[req] == nil or v[req] == null then
        local p = path == "" and req or path .. "." .. req
        errs[#errs + 1] = ("`%s` is required"):format(p)
      end
    end
    local first = #errs
    for k in pairs(v) do
      k = tostring(k)
      local p = path == "" and k or path .. "." .. k
      local sub = props[k]
      if sub then
        if v[k] ~= null or sub.type == "null" then validate(sub, v[k], p, errs)
        end
      elseif s.additionalProperties == false then
        local known = {}
        for pk in pairs(props) do known[#known + 1] = pk end
        table.sort(known)
        errs[#errs + 1] = ("`%s` is not a known argument%s"):format(p,
          #known > 0 and (" (known: " .. table.concat(known, ", ") .. ")") or "")
      elseif type(s.additionalProperties) == "table" then
        validate(s.additionalProperties, v[k], p, errs)
      end
    end
    -- the same message order whatever the table order
    if #errs > first + 1 then
      local tail = { table.unpack(errs, first + 1) }
      table.sort(tail)
      table.move(tail, 1, #tail, first + 1, errs)
    end
  end
end

-- Integer-typed values given as integral floats (5.0, as some JSON
-- decoders give them) become integers, in place, so that errors and what
-- goes out (a query string, a message) say 5, not 5.0.
local function integers(s, v)
  if s.type == "integer" and math.type(v) == "float" then
    return (v > -2^53 and v < 2^53 and math.tointeger(v)) or v
  end
  if type(v) == "table" and v ~= null then
    for k, sub in pairs(s.properties or {}) do
      local x = rawget(v, k)
      if x ~= nil then v[k] = integers(sub, x) end
    end
    if s.items then
      for i = 1, #v do v[i] = integers(s.items, v[i]) end
    end
  end
  return v
end

-- Validate args against schema s. Returns args (with defaults applied to
-- a copy of the top level) or nil, message, list of errors.
function M.validate(s, args)
  if args == nil or args == null then args = {} end
  args = integers(s, args)
  local errs = {}
  validate(s, args, "", errs)
  if #errs > 0 then
    return nil, "Invalid arguments: " .. table.concat(errs, "; ") .. ".", errs
  end
  local out = {}
  for k, v in pairs(args) do
    if v ~= null then out[k] = v end
  end
  for k, sub in pairs(s.properties or {}) do
    if out[k] == nil and sub.default ~= nil then out[k] = sub.default end
  end
  return out
end

-- Check a schema definition itself (at load). Returns true or nil, err
-- naming the field at fault.
local keywords = {
  type = true, description = true, title = true, properties = true, required = true,
  enum = true, minimum = true, maximum = true, minLength = true, maxLength = true,
  additionalProperties = true, items = true, minItems = true, maxItems = true,
  uniqueItems = true, format = true, default = true, examples = true,
}
local types = { object = true, array = true, string = true, integer = true,
                number = true, boolean = true, null = true }

local function check_def(s, path)
  if type(s) ~= "table" then return nil, path .. " must be a table" end
  for k in pairs(s) do
    if not keywords[k] then
      return nil, ("%s: unsupported keyword '%s'"):format(path, tostring(k))
    end
  end
  if s.type ~= nil and not types[s.type] then
    return nil, ("%s.type: unknown type '%s'"):format(path, tostring(s.type))
  end
  if s.format ~= nil and not format_of(s.format) then
    return nil, ("%s.format: unknown format '%s'"):format(path, tostring(s.format))
  end
  for _, n in ipairs({ "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems" }) do
    if s[n] ~= nil and type(s[n]) ~= "number" then
      return nil, ("%s.%s must be a number"):format(path, n)
    end
  end
  if s.enum ~= nil and (type(s.enum) ~= "table" or #s.enum == 0) then
    return nil, path .. ".enum must be a non-empty list"
  end
  if s.required ~= nil then
    if type(s.required) ~= "table" then return nil, path .. ".required must be a list" end
    for i, r in ipairs(s.required) do
      if type(r) ~= "string" or not (s.properties and s.properties[r]) then
        return nil, ("%s.required[%d]: '%s' is not a declared property"):format(path, i, tostring(r))
      end
    end
  end
  if s.properties ~= nil then
    if type(s.properties) ~= "table" then return nil, path .. ".properties must be a table" end
    for k, sub in pairs(s.properties) do
      if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
        return nil, ("%s.properties: invalid name '%s'"):format(path, tostring(k))
      end
      local ok, err = check_def(sub, path .. ".properties." .. k)
      if not ok then return nil, err end
    end
  end
  if s.items ~= nil then
    local ok, err = check_def(s.items, path .. ".items")
    if not ok then return nil, err end
  end
  if type(s.additionalProperties) == "table" then
    local ok, err = check_def(s.additionalProperties, path .. ".additionalProperties")
    if not ok then return nil, err end
  elseif s.additionalProperties ~= nil and type(s.additionalProperties) ~= "boolean" then
    return nil, path .. ".additionalProperties must be a boolean or a schema"
  end
  if s.default ~= nil then
    local errs = {}
    validate(s, s.default, "", errs)
    if #errs > 0 then return nil, path .. ".default does not match its own schema" end
  end
  return true
end

function M.check_definition(s, path)
  local ok, err = check_def(s, path)
  if not ok then return nil, err end
  if s.type ~= "object" then return nil, path .. ".type must be \"object\"" end
  return true
end

-- The schema as advertised over MCP: plain JSON Schema (our named formats
-- stay as "format" annotations, which JSON Schema allows).
function M.export(s)
  local out = {}
  for k, v in pairs(s) do
    if k == "properties" then
      local props = {}
      for pk, pv in pairs(v) do props[pk] = M.export(pv) end
      out.properties = props
    elseif k == "items" or (k == "additionalProperties" and type(v) == "table") then
      out[k] = M.export(v)
    elseif k == "required" then
      if #v > 0 then out.required = v end
    else
      out[k] = v
    end
  end
  if out.type == "object" and out.properties == nil then out.properties = {} end
  return out
end

return M
