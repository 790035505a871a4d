-- Tool arguments through schema validation: schema.validate with each
-- built-in tool's input_schema, then the chosen action's rules (a tool with
-- actions) and the tool's own check, as the pipeline runs them. Input: byte 1 picks the tool (registry order), the rest is
-- the arguments as JSON text. Arguments the MCP layer would not pass on
-- (not a JSON object, or text that is not valid UTF-8) are rejected as
-- expected.
-- Invariants: neither raises; a refusal is a string naming the rule (valid
-- UTF-8, "Invalid arguments: ...") with the list of errors; accepted
-- arguments hold every required property, only declared ones when
-- additionalProperties is false, and validate again unchanged.
local root = ...
local runner = require("fuzz.runner")
local json = require("switchboard.json")
local schema = require("switchboard.schema")
local registry = require("switchboard.registry")

local pkgs = assert(require("switchboard.integrations").load({ root .. "/integrations" }))
local dirs = {}
for _, pkg in ipairs(pkgs) do dirs[#dirs + 1] = { dir = pkg.tools_dir, package = pkg } end
local reg = assert(registry.load(dirs))
local tools = {}
for _, name in ipairs(reg.order) do tools[#tools + 1] = reg.tools[name] end

local function all_utf8(v, depth)
  if type(v) == "string" then return runner.utf8_ok(v) end
  if type(v) == "table" and depth < 70 then
    for k, x in pairs(v) do
      if not all_utf8(k, depth + 1) or not all_utf8(x, depth + 1) then return false end
    end
  end
  return true
end

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b or (a ~= a and b ~= b) end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

return function(bytes)
  local tool = tools[(bytes:byte(1) or 0) % #tools + 1]
  local args, derr = json.decode(bytes:sub(2))
  if args == nil then runner.reject("not JSON: " .. tostring(derr)) end
  if args ~= json.null and (type(args) ~= "table" or rawget(args, 1) ~= nil) then
    runner.reject("not an object")
  end
  if not all_utf8(args, 0) then runner.reject("invalid UTF-8") end
  if args == json.null then args = nil end

  local s = tool.input_schema
  local out, msg, errs = schema.validate(s, args)
  if not out then
    assert(type(msg) == "string" and msg:find("^Invalid arguments: ") and runner.utf8_ok(msg),
      "a refusal without a clear message: " .. tostring(msg))
    assert(type(errs) == "table" and #errs > 0, "a refusal without its list of errors")
    return
  end
  assert(type(out) == "table", "accepted arguments are not a table")
  for _, k in ipairs(s.required or {}) do
    assert(out[k] ~= nil and out[k] ~= json.null, ("%s: required `%s` missing from accepted arguments"):format(tool.name, k))
  end
  for k in pairs(out) do
    if s.additionalProperties == false then
      assert(s.properties[k], ("%s: undeclared `%s` accepted"):format(tool.name, tostring(k)))
    end
  end
  local again, aerr = schema.validate(s, out)
  assert(again, ("%s: accepted arguments fail validation again: %s"):format(tool.name, tostring(aerr)))
  assert(same(again, out), tool.name .. ": validating accepted arguments again changed them")
  assert(json.encode(out), "accepted arguments do not encode")
  -- a tool with actions: the chosen action's arguments, before the tool's check
  local aok, why = registry.check_action(tool, out)
  if not aok then
    assert(type(why) == "string" and why ~= "" and runner.utf8_ok(why),
      ("%s: the action check refused without a clear message: %s"):format(tool.name, tostring(why)))
    return
  end
  assert(type(registry.handler(tool, out)) == "function", tool.name .. ": accepted arguments have no handler")
  if tool.check then
    local ok, cerr = tool.check(out)
    if not ok then
      assert(type(cerr) == "string" and cerr ~= "" and runner.utf8_ok(cerr),
        ("%s: check refused without a clear message: %s"):format(tool.name, tostring(cerr)))
    end
  end
end
