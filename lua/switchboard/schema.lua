-- Tool schemas: the JSON Schema subset tools may use, checked once at
-- load (M.check_definition), validation at every call (M.validate) with
-- messages an LLM can act on, and the standard JSON Schema 2020-12 that
-- MCP clients are given (M.export).
local json = require("switchboard.json")
local phone = require("switchboard.phone")
local time = require("switchboard.time")

local M = {}

local null = json.null
local EMPTY_ARRAY = json.array(nil) -- what json.array gives for no items
M.DIALECT = "https://json-schema.org/draft/2020-12/schema"

-- A SID: a two-letter prefix followed by 32 hexadecimal characters.
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

-- Written in E.164 form, valid or not (for a lookup that asks the provider).
local function e164_syntax(s)
  return s:match("^%+[1-9]%d+$") ~= nil and #s >= 8 and #s <= 16
end

-- The exported patterns (ECMA-262 regular expressions, as JSON Schema
-- has them) and the same rule in Lua, so that an exported schema can be
-- checked here too. Only these patterns are known to M.validate.
local E164_PATTERN = "^\\+[1-9][0-9]{1,14}$"
local E164_SYNTAX_PATTERN = "^\\+[1-9][0-9]{6,14}$"
local HTTP_PATTERN = "^https?://"
local SID_PATTERN = "^%s[0-9a-fA-F]{32}$"
M.patterns = {
  [E164_PATTERN] = function(s) return s:match("^%+[1-9]%d+$") ~= nil and #s <= 16 end,
  [E164_SYNTAX_PATTERN] = e164_syntax,
  [HTTP_PATTERN] = function(s) return s:match("^https?://") ~= nil end,
}
local function sid_pattern(prefix)
  local p = SID_PATTERN:format(prefix)
  M.patterns[p] = M.patterns[p] or function(s) return hex32(s, prefix) end
  return p
end

-- Named formats: a checker, how to describe the rule to an agent, and
-- what the export writes instead when JSON Schema does not define the
-- format (a pattern, a standard format, a note for the description).
M.formats = {
  e164 = { check = M.is_e164,
           rule = "a valid phone number in E.164 format, like +14155550123",
           export = { pattern = E164_PATTERN,
                      note = "E.164: a plus and up to 15 digits, no spaces. The server also checks that the number"
                        .. " is valid (libphonenumber) and refuses one that is not." } },
  ["e164-syntax"] = { check = e164_syntax,
                      rule = "a phone number in E.164 format (a plus and 7 to 15 digits), like +14155550123",
                      export = { pattern = E164_SYNTAX_PATTERN,
                                 note = "E.164: a plus and 7 to 15 digits, no spaces." } },
  email = { check = function(s)
              return #s <= 254 and s:match("^[%w%.%%%+%-_]+@[%w%-]+%.[%w%.%-]+$") ~= nil
                and not s:find("..", 1, true)
            end,
            rule = "an email address, like name@example.com" },
  date = { check = function(s)
             local t, is_date = time.parse_iso(s)
             return t ~= nil and is_date
           end,
           rule = "a date as YYYY-MM-DD" },
  -- a date alone is taken too: exported as anyOf date / date-time
  ["date-time"] = { check = function(s) return time.parse_iso(s) ~= nil end,
                    rule = "an ISO 8601 date or date-time, like 2026-01-31 or 2026-01-31T09:00:00Z",
                    export = { dates = true } },
  ["http-url"] = { check = function(s)
                     return s:match("^[hH][tT][tT][pP][sS]?://[^%s/?#]+[^%s]*$") ~= nil
                   end,
                   rule = "an http:// or https:// URL",
                   export = { format = "uri", pattern = HTTP_PATTERN, note = "An http:// or https:// URL." } },
  uri = { check = function(s) return s:match("^%a[%w%+%-%.]*:[^%s]+$") ~= nil end,
          rule = "a URI" },
}

-- SIDs: "sid:AC" means "AC" followed by 32 hex digits.
local sid_formats = {}
local function format_of(name)
  local f = M.formats[name] or sid_formats[name]
  if f then return f end
  local prefix = type(name) == "string" and name:match("^sid:(%u%u)$")
  if prefix then
    sid_formats[name] = { check = function(s) return hex32(s, prefix) end,
             rule = ("an identifier of %s followed by 32 hexadecimal characters"):format(prefix),
             export = { pattern = sid_pattern(prefix),
                        note = ("%s followed by 32 hexadecimal characters."):format(prefix) } }
    return sid_formats[name]
  end
  return nil
end

-- The Lua check of an exported pattern: a known one, or a SID's
-- (^XX[0-9a-fA-F]{32}$, from an exported schema); nil for any other.
local function pattern_check(pattern)
  local check = M.patterns[pattern]
  if check then return check end
  local prefix = pattern:match("^%^(%u%u)%[0%-9a%-fA%-F%]{32}%$$")
  if prefix then return M.patterns[sid_pattern(prefix)] end
  return nil
end

local function json_type(v)
  local t = type(v)
  if v == null then return "null" end
  if v == EMPTY_ARRAY then return "array" end
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

local function same(a, b)
  if a == EMPTY_ARRAY then a = {} end
  if b == EMPTY_ARRAY then b = {} end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, x in pairs(a) do if not same(x, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- "#/$defs/name" in the schema `root`: the schema, or nil.
local function deref(root, ref)
  local name = type(ref) == "string" and ref:match("^#/%$defs/([%w_%.%-]+)$")
  local defs = root and root["$defs"]
  return name and type(defs) == "table" and defs[name] or nil
end

local MAX_DEPTH = 200

-- One sentence for a schema, for "must be one of: …".
local function describe(s, root)
  if s["$ref"] then
    local target = deref(root, s["$ref"])
    if target and not target["$ref"] then return describe(target, root) end
  end
  if s.description and #s.description <= 80 then return s.description end
  if s.const ~= nil then return ("%q"):format(tostring(s.const)) end
  if s.format and format_of(s.format) then return format_of(s.format).rule end
  if s.type then return (s.type:match("^[aeiou]") and "an " or "a ") .. s.type end
  return "a value of another shape"
end

local validate

-- Does this alternative plainly not apply to v: another type, or a
-- property whose const differs (a tag such as action = "search")?
local function unrelated(s, v, root)
  if s["$ref"] then
    local target = deref(root, s["$ref"])
    if target then return unrelated(target, v, root) end
  end
  if s.type and not is_type(s.type, v) then return true end
  if s.const ~= nil and not same(s.const, v) then return true end
  if type(v) == "table" and v ~= EMPTY_ARRAY and type(s.properties) == "table" then
    for k, sub in pairs(s.properties) do
      if type(sub) == "table" and sub.const ~= nil then
        local x = v[k]
        if x == nil or not same(sub.const, x) then return true end
      end
    end
  end
  return false
end

local function alternatives(list, one, v, path, errs, root, depth, name)
  local matched, results = {}, {}
  for i, alt in ipairs(list) do
    local e = {}
    validate(alt, v, path, e, root, depth + 1)
    results[i] = e
    if #e == 0 then matched[#matched + 1] = i end
  end
  if one and #matched > 1 then
    errs[#errs + 1] = ("%s matches %d of its alternatives (%s) where exactly one must match"):format(name,
      #matched, table.concat(matched, ", "))
    return
  end
  if #matched > 0 then return end
  local near = {}
  for i, alt in ipairs(list) do
    if not unrelated(alt, v, root) then near[#near + 1] = i end
  end
  if #near == 1 then
    for _, e in ipairs(results[near[1]]) do errs[#errs + 1] = e end
    return
  end
  local opts = {}
  for i, alt in ipairs(list) do opts[i] = describe(alt, root) end
  errs[#errs + 1] = ("%s must be one of: %s (got %s)"):format(name, table.concat(opts, "; "), show(v))
end

function validate(s, v, path, errs, root, depth)
  local name = path == "" and "arguments" or ("`%s`"):format(path)
  local before = #errs
  if depth > MAX_DEPTH then
    errs[#errs + 1] = ("%s: the schema nests too deeply here"):format(name)
    return
  end
  if s["$ref"] then
    local target = deref(root, s["$ref"])
    if not target then error(("schema: %s: unresolved $ref '%s'"):format(name, tostring(s["$ref"])), 0) end
    validate(target, v, path, errs, root, depth + 1)
    if #errs > before then return end
  end
  if s.type and not is_type(s.type, v) then
    errs[#errs + 1] = ("%s must be %s (got %s)"):format(name,
      (s.type:match("^[aeiou]") and "an " or "a ") .. s.type, show(v))
    return
  end
  if s.const ~= nil and not same(s.const, v) then
    errs[#errs + 1] = ("%s must be %s (got %s)"):format(name, show(s.const), show(v))
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
    if s.pattern then
      local check = pattern_check(s.pattern)
      if not check then error(("schema: %s: pattern '%s' is not one this validator knows"):format(name, s.pattern), 0) end
      if not check(v) then
        errs[#errs + 1] = ("%s must match the pattern %s (got %s)"):format(name, s.pattern, show(v))
      end
    end
  elseif t == "integer" or t == "number" then
    if s.minimum and v < s.minimum then
      errs[#errs + 1] = ("%s must be at least %s (got %s)"):format(name, s.minimum, v)
    end
    if s.maximum and v > s.maximum then
      errs[#errs + 1] = ("%s must be at most %s (got %s)"):format(name, s.maximum, v)
    end
  elseif v == EMPTY_ARRAY or (type(v) == "table" and (s.type == "array" or (s.items and t == "array"))) then
    local n = v == EMPTY_ARRAY and 0 or #v
    if s.minItems and n < s.minItems then
      errs[#errs + 1] = ("%s must have at least %d items (got %d)"):format(name, s.minItems, n)
    end
    if s.maxItems and n > s.maxItems then
      errs[#errs + 1] = ("%s must have at most %d items (got %d)"):format(name, s.maxItems, n)
    end
    if s.items then
      for i = 1, n do validate(s.items, v[i], ("%s[%d]"):format(path, i - 1), errs, root, depth + 1) end
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
        if v[k] ~= null or sub.type == "null" then validate(sub, v[k], p, errs, root, depth + 1)
        end
      elseif s.additionalProperties == false then
        local known = {}
        for pk in pairs(props) do known[#known + 1] = pk end
        table.sort(known)
        errs[#errs + 1] = ("`%s` is not a known %s%s"):format(p, path == "" and "argument" or "property",
          #known > 0 and (" (known: " .. table.concat(known, ", ") .. ")") or "")
      elseif type(s.additionalProperties) == "table" then
        validate(s.additionalProperties, v[k], p, errs, root, depth + 1)
      end
    end
    -- the same message order whatever the table order
    if #errs > first + 1 then
      local tail = { table.unpack(errs, first + 1) }
      table.sort(tail)
      table.move(tail, 1, #tail, first + 1, errs)
    end
  end
  if s.anyOf and #errs == before then alternatives(s.anyOf, false, v, path, errs, root, depth, name) end
  if s.oneOf and #errs == before then alternatives(s.oneOf, true, v, path, errs, root, depth, name) end
end

-- Does v conform to s: validate's verdict without its messages, and
-- without building a path or a message for every value it walks (a
-- tool's result of 20 messages has hundreds). It must never accept what
-- validate refuses; where it refuses, M.validate and M.conforms' callers
-- run validate for the messages (and take validate's verdict).
local conforms
local function conforms_string(s, v)
  local n = utf8.len(v)
  if not n then return false end
  if s.minLength and n < s.minLength then return false end
  if s.maxLength and n > s.maxLength then return false end
  if s.format then
    local f = format_of(s.format)
    if f and not f.check(v) then return false end
  end
  if s.pattern then
    local check = pattern_check(s.pattern)
    if not check or not check(v) then return false end -- unknown: validate raises
  end
  return true
end

local function conforms_alternatives(list, one, v, root, depth)
  local matched = 0
  for _, alt in ipairs(list) do
    if conforms(alt, v, root, depth + 1) then
      matched = matched + 1
      if not one then return true end
    end
  end
  return one and matched == 1
end

function conforms(s, v, root, depth)
  if depth > MAX_DEPTH then return false end
  local ref = s["$ref"]
  if ref then
    local target = deref(root, ref)
    if not target or not conforms(target, v, root, depth + 1) then return false end
  end
  local st = s.type
  if st and not is_type(st, v) then return false end
  if s.const ~= nil and not same(s.const, v) then return false end
  local enum = s.enum
  if enum then
    local ok = false
    for _, e in ipairs(enum) do if e == v then ok = true; break end end
    if not ok then return false end
  end
  local tv = type(v)
  if tv == "string" and v ~= EMPTY_ARRAY then
    if not conforms_string(s, v) then return false end
  elseif tv == "number" then
    if s.minimum and v < s.minimum then return false end
    if s.maximum and v > s.maximum then return false end
  elseif v == EMPTY_ARRAY or (tv == "table" and v ~= null
      and (st == "array" or (s.items and json_type(v) == "array"))) then
    local n = v == EMPTY_ARRAY and 0 or #v
    if s.minItems and n < s.minItems then return false end
    if s.maxItems and n > s.maxItems then return false end
    local items = s.items
    if items then
      for i = 1, n do
        if not conforms(items, v[i], root, depth + 1) then return false end
      end
    end
    if s.uniqueItems then
      local seen = {}
      for i = 1, n do
        local key = type(v[i]) == "table" and json.encode(v[i]) or tostring(v[i])
        if seen[key] then return false end
        seen[key] = true
      end
    end
  elseif tv == "table" and v ~= null then
    local props = s.properties or {}
    local req = s.required
    if req then
      for _, k in ipairs(req) do
        local x = v[k]
        if x == nil or x == null then return false end
      end
    end
    local additional = s.additionalProperties
    for k in pairs(v) do
      k = tostring(k)
      local sub, x = props[k], v[k]
      if sub then
        if (x ~= null or sub.type == "null") and not conforms(sub, x, root, depth + 1) then return false end
      elseif additional == false then
        return false
      elseif type(additional) == "table" then
        if not conforms(additional, x, root, depth + 1) then return false end
      end
    end
  end
  if s.anyOf and not conforms_alternatives(s.anyOf, false, v, root, depth) then return false end
  if s.oneOf and not conforms_alternatives(s.oneOf, true, v, root, depth) then return false end
  return true
end

-- Every message validate gives for v against s (none: v conforms), by the
-- full walk; M.conforms must agree with it (tests/unit/schema_spec.lua).
function M.errors(s, v)
  local errs = {}
  validate(s, v == nil and {} or v, "", errs, s, 0)
  return errs
end

-- Does v conform to s (nil args count as {} as in M.validate)? For a check
-- that needs no message unless it fails: a tool's result.
function M.conforms(s, v)
  if v == nil then v = {} end
  return conforms(s, v, s, 0)
end

-- Integer-typed values given as integral floats (5.0, as some JSON
-- decoders give them) become integers, in place, so that errors and what
-- goes out (a query string, a message) say 5, not 5.0. Through $ref and
-- every alternative of anyOf/oneOf (an integer is also a number).
local function integers(s, v, root, depth)
  if depth > MAX_DEPTH then return v end
  if s["$ref"] then
    local target = deref(root, s["$ref"])
    if target then v = integers(target, v, root, depth + 1) end
  end
  for _, alt in ipairs(s.anyOf or s.oneOf or {}) do v = integers(alt, v, root, depth + 1) end
  if s.type == "integer" and math.type(v) == "float" then
    return (v > -2^53 and v < 2^53 and math.tointeger(v)) or v
  end
  if type(v) == "table" and v ~= null and v ~= EMPTY_ARRAY then
    for k, sub in pairs(s.properties or {}) do
      local x = rawget(v, k)
      if x ~= nil then v[k] = integers(sub, x, root, depth + 1) end
    end
    if s.items then
      for i = 1, #v do v[i] = integers(s.items, v[i], root, depth + 1) end
    end
  end
  return v
end

-- Validate args against schema s. Returns args (with defaults applied to
-- a copy of the top level) or nil, message, list of errors. opts.what
-- names what is validated in the message (default "arguments").
function M.validate(s, args, opts)
  if args == nil or args == null then args = {} end
  args = integers(s, args, s, 0)
  local errs = {}
  if not conforms(s, args, s, 0) then validate(s, args, "", errs, s, 0) end
  if #errs > 0 then
    local what = opts and opts.what or "arguments"
    if what ~= "arguments" then
      for i, e in ipairs(errs) do
        errs[i] = e:gsub("is not a known argument", "is not a known property"):gsub("^arguments ", "the " .. what .. " ")
      end
    end
    return nil, ("Invalid %s: %s."):format(what, table.concat(errs, "; ")), errs
  end
  if type(args) ~= "table" or args == EMPTY_ARRAY then return args end
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
  ["$ref"] = true, ["$defs"] = true, ["$schema"] = true, oneOf = true, anyOf = true, const = true,
}
local types = { object = true, array = true, string = true, integer = true,
                number = true, boolean = true, null = true }

local check_def

local function check_list(s, key, path, root)
  local list = s[key]
  if list == nil then return true end
  if type(list) ~= "table" or #list < 1 then
    return nil, ("%s.%s must be a non-empty list of schemas"):format(path, key)
  end
  for k in pairs(list) do
    if math.type(k) ~= "integer" or k < 1 or k > #list then
      return nil, ("%s.%s must be a list (found key '%s')"):format(path, key, tostring(k))
    end
  end
  for i, alt in ipairs(list) do
    local ok, err = check_def(alt, ("%s.%s[%d]"):format(path, key, i), root)
    if not ok then return nil, err end
  end
  return true
end

function check_def(s, path, root)
  if type(s) ~= "table" then return nil, path .. " must be a table" end
  for k in pairs(s) do
    if not keywords[k] then
      local hint = k == "pattern" and " (use format, or a check function in the tool)"
        or (k == "allOf" or k == "not") and " (use anyOf, oneOf or a check function in the tool)" or ""
      return nil, ("%s: unsupported keyword '%s'%s"):format(path, tostring(k), hint)
    end
  end
  if s["$schema"] ~= nil and (s ~= root or s["$schema"] ~= M.DIALECT) then
    return nil, ("%s.$schema: only at the top of a schema, and only \"%s\""):format(path, M.DIALECT)
  end
  if s["$defs"] ~= nil then
    if s ~= root then return nil, path .. ".$defs: only at the top of a schema" end
    if type(s["$defs"]) ~= "table" then return nil, path .. ".$defs must be a table of named schemas" end
    for k, sub in pairs(s["$defs"]) do
      if type(k) ~= "string" or not k:match("^[%w_%.%-]+$") then
        return nil, ("%s.$defs: invalid name '%s' (letters, digits, '_', '.', '-')"):format(path, tostring(k))
      end
      local ok, err = check_def(sub, path .. ".$defs." .. k, root)
      if not ok then return nil, err end
    end
  end
  if s["$ref"] ~= nil then
    local ref = s["$ref"]
    if type(ref) ~= "string" or not ref:match("^#/%$defs/[%w_%.%-]+$") then
      return nil, ("%s.$ref: must be a local reference \"#/$defs/<name>\" (got %s)"):format(path,
        type(ref) == "string" and ("%q"):format(ref) or type(ref))
    end
    if not deref(root, ref) then
      return nil, ("%s.$ref: '%s' names no schema in $defs"):format(path, ref)
    end
  end
  if s.type ~= nil and not types[s.type] then
    return nil, ("%s.type: unknown type '%s'"):format(path, tostring(s.type))
  end
  if s.format == "date-time" and s.anyOf then
    return nil, path .. ": format \"date-time\" (exported as anyOf date / date-time) cannot stand beside anyOf"
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
  if s.const ~= nil then
    local ct = type(s.const)
    if ct == "function" or ct == "userdata" or ct == "thread" then
      return nil, path .. ".const must be a JSON value"
    end
    if s.type and not is_type(s.type, s.const) then
      return nil, ("%s.const: %s is not of its type %s"):format(path, show(s.const), s.type)
    end
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
      local ok, err = check_def(sub, path .. ".properties." .. k, root)
      if not ok then return nil, err end
    end
  end
  if s.items ~= nil then
    local ok, err = check_def(s.items, path .. ".items", root)
    if not ok then return nil, err end
  end
  if type(s.additionalProperties) == "table" then
    local ok, err = check_def(s.additionalProperties, path .. ".additionalProperties", root)
    if not ok then return nil, err end
  elseif s.additionalProperties ~= nil and type(s.additionalProperties) ~= "boolean" then
    return nil, path .. ".additionalProperties must be a boolean or a schema"
  end
  for _, key in ipairs({ "anyOf", "oneOf" }) do
    local ok, err = check_list(s, key, path, root)
    if not ok then return nil, err end
  end
  if s.default ~= nil then
    local errs = {}
    validate(s, s.default, "", errs, root, 0)
    if #errs > 0 then return nil, path .. ".default does not match its own schema" end
  end
  return true
end

-- A $ref, anyOf or oneOf that leads back to itself without going into a
-- property or an item would never end: refused at load.
local function ref_loop(root)
  local defs = root["$defs"] or {}
  local function walk(s, seen)
    if type(s) ~= "table" then return nil end
    local name = type(s["$ref"]) == "string" and s["$ref"]:match("^#/%$defs/(.+)$")
    if name then
      if seen[name] then return name end
      seen[name] = true
      local hit = walk(defs[name], seen)
      seen[name] = nil
      if hit then return hit end
    end
    for _, alt in ipairs(s.anyOf or {}) do local hit = walk(alt, seen) if hit then return hit end end
    for _, alt in ipairs(s.oneOf or {}) do local hit = walk(alt, seen) if hit then return hit end end
    return nil
  end
  local names = {}
  for k in pairs(defs) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local hit = walk({ ["$ref"] = "#/$defs/" .. k }, {})
    if hit then return hit end
  end
  return walk(root, {})
end

function M.check_definition(s, path)
  local ok, err = check_def(s, path, s)
  if not ok then return nil, err end
  if s.type ~= "object" then return nil, path .. ".type must be \"object\"" end
  local loop_at = ref_loop(s)
  if loop_at then
    return nil, ("%s.$defs.%s: refers back to itself through $ref/anyOf/oneOf without nesting into a property or"
      .. " an item"):format(path, loop_at)
  end
  return true
end

-- The schema as advertised over MCP: standard JSON Schema 2020-12 that a
-- strict validator compiles. Named formats JSON Schema does not define
-- become a pattern (and a standard format where one fits) with the rule in
-- the description; "date-time", which takes a date too, becomes anyOf
-- date / date-time. The validation above keeps the named formats.
local function with_note(desc, note)
  if not note then return desc end
  if not desc or desc == "" then return note end
  return desc .. (desc:find("[%.!?]$") and " " or ". ") .. note
end

local function export(s)
  local out = {}
  for k, v in pairs(s) do
    if k == "properties" or k == "$defs" then
      local props = {}
      for pk, pv in pairs(v) do props[pk] = export(pv) end
      out[k] = props
    elseif k == "items" or (k == "additionalProperties" and type(v) == "table") then
      out[k] = export(v)
    elseif k == "anyOf" or k == "oneOf" then
      local list = {}
      for i, alt in ipairs(v) do list[i] = export(alt) end
      out[k] = list
    elseif k == "required" then
      if #v > 0 then out.required = v end
    elseif k == "format" then
      local f = format_of(v)
      local how = f and f.export
      if not how then
        out.format = v
      elseif how.dates then
        local date = { type = "string", format = "date" }
        local dt = { type = "string", format = "date-time" }
        out.anyOf = { date, dt }
      else
        out.format = how.format
        out.pattern = how.pattern
      end
    else
      out[k] = v
    end
  end
  local f = s.format and format_of(s.format)
  if f and f.export then out.description = with_note(out.description, f.export.note) end
  if out.type == "object" and out.properties == nil then out.properties = {} end
  return out
end

function M.export(s)
  local out = export(s)
  out["$schema"] = M.DIALECT
  return out
end

return M
