-- switchboard.schema and the registry's export: tool files may use $defs,
-- $ref, oneOf, anyOf and const; what tools/list gives is standard JSON
-- Schema 2020-12 (no named formats); output schemas have a fixed shape;
-- pipeline content blocks are checked.
-- Run: ./switchboard exec /usr/bin/busted --lpath="$PWD/tests/?.lua" tests/unit/schema_spec.lua
local json = require("switchboard.json")
local schema = require("switchboard.schema")
local registry = require("switchboard.registry")
local pipeline = require("switchboard.pipeline")

local ROOT = os.getenv("SB_ROOT") or "."

local function load(dirs)
  return assert(registry.load(dirs))
end

local function tool_def(input, output)
  return { name = "t", description = "d", group = "G", input_schema = input, output_schema = output,
           annotations = { readOnlyHint = true }, handler = function() end }
end

-- every schema object in s, with its path
local function walk(s, path, fn)
  if type(s) ~= "table" then return end
  fn(s, path)
  for k, v in pairs(s) do
    if type(v) == "table" then walk(v, path .. "." .. tostring(k), fn) end
  end
end

describe("tool files with $defs, $ref, oneOf, anyOf and const", function()
  local reg = load({ ROOT .. "/tests/fixtures/schema_tools" })
  local tool = reg.tools.test_shapes

  it("load, and arguments validate through them", function()
    assert.truthy(tool)
    local args = assert(schema.validate(tool.input_schema, { shape = { kind = "square", side = 3.0 } }))
    assert.equal("cm", args.unit)
    assert.equal(3, args.shape.side)
    assert.equal("integer", math.type(args.shape.side)) -- through $ref inside oneOf
    assert.truthy(schema.validate(tool.input_schema, { shape = { kind = "circle", radius = 1.5 }, unit = "in" }))
  end)

  it("refuse arguments with the field and the rule", function()
    local cases = {
      { { shape = { kind = "square", side = 0 } }, "`shape.side` must be at least 1 (got 0)" },
      { { shape = { kind = "circle" } }, "`shape.radius` is required" },
      { { shape = { kind = "circle", radius = 1, side = 2 } }, "`shape.side` is not a known property" },
      { { shape = { kind = "triangle" } }, "`shape` must be one of:" },
      { { shape = { kind = "circle", radius = 1 }, unit = "mm" }, "`unit` must be one of: \"cm\"; \"in\" (got \"mm\")" },
      { { shape = "round" }, "`shape` must be one of:" },
    }
    for _, c in ipairs(cases) do
      local ok, msg = schema.validate(tool.input_schema, c[1])
      assert.is_nil(ok, json.encode(c[1]))
      assert.truthy(msg:find(c[2], 1, true), msg .. " -- wanted " .. c[2])
    end
  end)

  it("const and oneOf report their rule", function()
    local s = { type = "object", properties = {
      v = { type = "string", const = "x" },
      n = { oneOf = { { type = "integer" }, { type = "number", minimum = 0 } } } } }
    assert(schema.check_definition(s, "input_schema"))
    local _, msg = schema.validate(s, { v = "y" })
    assert.equal("Invalid arguments: `v` must be \"x\" (got \"y\").", msg)
    _, msg = schema.validate(s, { n = 5 })
    assert.truthy(msg:find("`n` matches 2 of its alternatives (1, 2) where exactly one must match", 1, true), msg)
    assert.truthy(schema.validate(s, { n = 0.5 }))
  end)

  it("anyOf and oneOf side by side both apply", function()
    local s = { type = "object", properties = { v = {
      anyOf = { { type = "string" }, { type = "integer" } },
      oneOf = { { type = "string", minLength = 2 }, { type = "integer" } } } } }
    assert(schema.check_definition(s, "input_schema"))
    assert.truthy(schema.validate(s, { v = "ab" }))
    assert.truthy(schema.validate(s, { v = 3 }))
    local _, msg = schema.validate(s, { v = "a" })
    assert.equal("Invalid arguments: `v` must have at least 2 characters (got 1).", msg)
    _, msg = schema.validate(s, { v = true })
    assert.equal("Invalid arguments: `v` must be one of: a string; an integer (got a boolean).", msg)
  end)

  it("are refused at load when a rule is broken, naming the field", function()
    local obj = function(t)
      t.type = t.type or "object"
      return t
    end
    local cases = {
      { obj({ properties = { a = { ["$ref"] = "other.json#/x" } } }),
        "input_schema.properties.a.$ref: must be a local reference \"#/$defs/<name>\"" },
      { obj({ properties = { a = { ["$ref"] = "#/$defs/nope" } } }),
        "input_schema.properties.a.$ref: '#/$defs/nope' names no schema in $defs" },
      { obj({ properties = { a = { type = "object", ["$defs"] = { x = { type = "string" } } } } }),
        "input_schema.properties.a.$defs: only at the top of a schema" },
      { obj({ properties = { a = { oneOf = {} } } }), "input_schema.properties.a.oneOf must be a non-empty list" },
      { obj({ properties = { a = { anyOf = { { type = "strin" } } } } }),
        "input_schema.properties.a.anyOf[1].type: unknown type 'strin'" },
      { obj({ properties = { a = { type = "integer", const = "x" } } }),
        "input_schema.properties.a.const: \"x\" is not of its type integer" },
      { obj({ properties = { a = { ["$ref"] = "#/$defs/x" } }, ["$defs"] = { x = { ["$ref"] = "#/$defs/y" },
                                                                            y = { anyOf = { { ["$ref"] = "#/$defs/x" } } } } }),
        "refers back to itself" },
      { obj({ properties = { a = { type = "string", pattern = "^a" } } }), "unsupported keyword 'pattern'" },
      { obj({ properties = { a = { allOf = { { type = "string" } } } } }), "unsupported keyword 'allOf'" },
      { obj({ ["$schema"] = "http://json-schema.org/draft-07/schema#" }), "input_schema.$schema: only" },
    }
    for _, c in ipairs(cases) do
      local t, err = registry.check(tool_def(c[1]))
      assert.is_nil(t, c[2])
      assert.truthy(err:find(c[2], 1, true), err .. " -- wanted " .. c[2])
    end
    -- a recursive schema that goes through a property is fine
    local tree = obj({ properties = { root = { ["$ref"] = "#/$defs/node" } },
      ["$defs"] = { node = { type = "object", properties = { children = { type = "array",
        items = { ["$ref"] = "#/$defs/node" } } } } } })
    local t = assert(registry.check(tool_def(tree)))
    assert.truthy(schema.validate(t.input_schema, { root = { children = { { children = {} } } } }))
    local _, msg = schema.validate(t.input_schema, { root = { children = { { children = 3 } } } })
    assert.truthy(msg:find("`root.children[0].children` must be an array", 1, true), msg)
  end)
end)

describe("the export (tools/list)", function()
  local pkgs = assert(require("switchboard.integrations").load({ ROOT .. "/integrations" }))
  local reg = load({ { dir = pkgs[1].tools_dir, package = pkgs[1] }, ROOT .. "/examples/tools",
                     ROOT .. "/tests/fixtures/schema_tools" })
  local STANDARD = { date = true, ["date-time"] = true, email = true, uri = true }

  it("declares JSON Schema 2020-12 and writes no named format", function()
    for _, name in ipairs(reg.order) do
      local t = reg.tools[name]
      for kind, s in pairs({ input = t.exported, output = t.exported_output }) do
        assert.equal("https://json-schema.org/draft/2020-12/schema", s["$schema"], name .. " " .. kind)
        assert.equal("object", s.type)
        walk(s, name .. "." .. kind, function(node, path)
          if type(node.format) == "string" then
            assert.truthy(STANDARD[node.format], path .. ": format " .. node.format)
          end
        end)
      end
    end
  end)

  it("turns named formats into patterns with the rule in the description", function()
    local sms = reg.tools.twilio_send_sms.exported.properties
    assert.equal("^\\+[1-9][0-9]{1,14}$", sms.to.pattern)
    assert.is_nil(sms.to.format)
    assert.truthy(sms.to.description:find("libphonenumber", 1, true))
    assert.equal("uri", sms.media_url.format)
    assert.equal("^https?://", sms.media_url.pattern)
    local wa = reg.tools.twilio_send_whatsapp.exported.properties
    assert.equal("^HX[0-9a-fA-F]{32}$", wa.template_sid.pattern)
    local calls = reg.tools.twilio_manage_calls.exported.properties
    assert.equal("^CA[0-9a-fA-F]{32}$", calls.call_sid.pattern)
    assert.same({ { type = "string", format = "date" }, { type = "string", format = "date-time" } },
      calls.start_time_after.anyOf)
    assert.is_nil(calls.start_time_after.format)
    assert.equal("^\\+[1-9][0-9]{6,14}$", reg.tools.twilio_lookup_phone.exported.properties.phone_number.pattern)
    -- the tool's own schema keeps its named formats for the server's checks
    assert.equal("e164", reg.tools.twilio_send_sms.input_schema.properties.to.format)
    local ok, msg = schema.validate(reg.tools.twilio_send_sms.input_schema, { to = "+15555555555", body = "x" })
    assert.is_nil(ok)
    assert.truthy(msg:find("`to` must be a valid phone number in E.164 format", 1, true), msg)
  end)

  it("keeps $defs and $ref, and an exported schema validates as its source does", function()
    local t = reg.tools.test_shapes
    assert.equal("#/$defs/circle", t.exported.properties.shape.oneOf[1]["$ref"])
    assert.truthy(t.exported["$defs"].square)
    assert.truthy(schema.validate(t.exported, { shape = { kind = "circle", radius = 2 } }))
    assert.is_nil(schema.validate(t.exported, { shape = { kind = "circle", radius = -2 } }))
    local out = t.exported_output
    assert.truthy(schema.validate(out, { kind = "circle", area = 3.14, unit = "cm2" }))
    assert.truthy(out["$defs"].unit)
  end)

  it("gives the Twilio tools output schemas of a fixed shape that refuse {}", function()
    for _, name in ipairs(reg.order) do
      local t = reg.tools[name]
      if name:match("^twilio_") then
        assert.is_nil(schema.validate(t.output_schema, {}), name)
        assert.is_nil(schema.validate(t.exported_output, {}), name)
        -- every object shape is closed, and the top one (or each alternative) says what is required
        walk(t.output_schema, name, function(node, path)
          if node.type == "object" and not node.oneOf then
            assert.is_false(node.additionalProperties, path)
          end
        end)
        for i, alt in ipairs(t.output_schema.oneOf or { t.output_schema }) do
          assert.truthy(alt.required and #alt.required > 0, name .. " alternative " .. i)
        end
      end
    end
  end)

  it("accepts the pipeline's error and escalation results beside the tool's own", function()
    local out = reg.tools.twilio_send_sms.exported_output
    assert.truthy(schema.validate(out, { to = "+14155550123", from = "+14155550100", outcome = "sent" }))
    assert.truthy(schema.validate(out, { error = { message = "failed", code = 21610 }, outcome = "failed" }))
    assert.truthy(schema.validate(out, { escalation_id = 4, status = "held" }))
    assert.truthy(schema.validate(out, { status = "not_stored" }))
    assert.is_nil(schema.validate(out, { escalation_id = 4, status = "maybe" }))
    assert.is_nil(schema.validate(out, { error = { code = 1 } }))
    local _, msg = schema.validate(out, { outcome = "sent" }, { what = "result" })
    assert.truthy(msg:find("^Invalid result: the result must be one of: "), msg)
    -- an empty list (json.array) is an array
    local search = reg.tools.twilio_search_messages
    assert.truthy(schema.validate(search.output_schema,
      { action = "search", count = 0, more = false, messages = json.array({}) }))
    _, msg = schema.validate(search.output_schema, { action = "search", count = 0, more = false, messages = {},
                                                     extra = 1 }, { what = "result" })
    assert.truthy(msg:find("Invalid result: `extra` is not a known property", 1, true), msg)
  end)
end)

describe("pipeline results", function()
  it("repeat structuredContent as a JSON text block after the paragraph", function()
    local r = pipeline.result("Two numbers.", { count = 2, numbers = json.array({}) })
    assert.equal(2, #r.content)
    assert.equal("Two numbers.", r.content[1].text)
    assert.equal("text", r.content[2].type)
    assert.same({ count = 2, numbers = {} }, json.decode(r.content[2].text))
    assert.equal(1, #pipeline.result("No data.").content)
  end)

  it("leave the JSON block out when it would pass the size limit", function()
    local big = { s = ("x"):rep(3000) }
    local r = pipeline.result("Big.", big, false, { limit = 4096 })
    assert.equal(1, #r.content)
    assert.equal(big, r.structuredContent)
    assert.equal(2, #pipeline.result("Big.", big, false, { limit = 8192 }).content)
  end)

  it("check a handler's content blocks, naming the field", function()
    assert.truthy(pipeline.check_blocks({
      { type = "text", text = "hi" },
      { type = "image", data = "iVBORw0KGgo=", mimeType = "image/png" },
      { type = "audio", data = "UklGRg==", mimeType = "audio/wav" },
      { type = "resource_link", uri = "https://example.com/a", name = "a", mimeType = "image/png", size = 3 },
    }))
    local cases = {
      { { { type = "video" } }, "content[1].type: must be text, image, audio, resource_link or resource" },
      { { { type = "text" } }, "content[1].text: required for a text block" },
      { { { type = "text", text = "a" }, { type = "resource_link", name = "x" } },
        "content[2].uri: required for a resource_link block" },
      { { { type = "image", data = "abc", mimeType = "image/png" } }, "content[1].data: must be base64" },
      { { { type = "image", data = "YWJj", mimeType = "text/plain" } }, "content[1].mimeType: must be an image/" },
      { { { type = "resource_link", uri = "x", name = "x", size = 1.5 } }, "content[1].size: must be a integer" },
      { { { type = "resource_link", uri = "no uri", name = "x" } }, "content[1].uri: must be a URI" },
      { { { type = "text", text = "a", color = "red" } }, "content[1].color: not a field of a text block" },
      { { x = 1 }, "content: must be a list" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pipeline.check_blocks(c[1])
      assert.is_nil(ok, c[2])
      assert.truthy(err:find(c[2], 1, true), err .. " -- wanted " .. c[2])
    end
  end)
end)

describe("schema formats", function()
  it("checks the date and date-time formats with switchboard.time", function()
    local date, dt = schema.formats.date.check, schema.formats["date-time"].check
    for _, ok in ipairs({ "2024-02-29", "2000-02-29" }) do assert.is_true(date(ok), ok) end
    for _, bad in ipairs({ "2023-02-29", "2024-04-31", "2024-1-05", "2024-01-05T10:00:00Z", "x" }) do
      assert.is_false(date(bad), bad)
    end
    for _, ok in ipairs({ "2024-02-29", "2024-02-29T09:00:00Z", "2024-02-29T09:00:00.25+05:30", "2024-02-29 09:00",
                          "2024-02-29T09:00:00-0800" }) do
      assert.is_true(dt(ok), ok)
    end
    -- a day, hour or offset out of range is refused, not moved
    for _, bad in ipairs({ "2023-02-29T09:00:00Z", "2024-02-29T24:00:00Z", "2024-02-29T09:00:00+24:00",
                           "2024-02-29T09:00:00+5", "2024-02-29T9:00:00Z", "2024-02-29T09:00:00 Z" }) do
      assert.is_false(dt(bad), bad)
    end
  end)
end)

-- schema.conforms is the fast check (no messages) every call's result and
-- arguments go through first; it must give validate's verdict exactly.
describe("schema.conforms", function()
  local pkgs = assert(require("switchboard.integrations").load({ ROOT .. "/integrations" }))
  local reg = load({ { dir = pkgs[1].tools_dir, package = pkgs[1] }, ROOT .. "/examples/tools",
                     ROOT .. "/tests/fixtures/schema_tools" })
  local EMPTY = json.array(nil)
  local rng = 12345
  local function rand(n) rng = (rng * 1103515245 + 12345) % 2147483648; return rng % n + 1 end
  local SAMPLES = { e164 = "+14155550123", ["e164-syntax"] = "+14155550123", date = "2026-01-31",
                    ["date-time"] = "2026-01-31T09:00:00Z", ["http-url"] = "https://x.example/a",
                    uri = "urn:x", email = "a@b.example" }
  local JUNK = { "x", "", 7, -1, 2.5, 1e300, true, false, json.null, EMPTY, {}, { 1, 2 }, { a = 1 },
                 "+1415555012", "2026-13-40", "\255bad", ("y"):rep(300) }
  local function deref(root, s)
    local name = s["$ref"] and s["$ref"]:match("^#/%$defs/(.+)$")
    return name and root["$defs"][name] or s
  end
  local function gen(root, s, depth)
    if depth > 6 then return json.null end
    s = deref(root, s)
    local alts = s.oneOf or s.anyOf
    if alts and rand(4) > 1 then
      local v = gen(root, alts[rand(#alts)], depth + 1)
      if type(v) == "table" and s.properties then
        for k, sub in pairs(s.properties) do if v[k] == nil and rand(2) == 1 then v[k] = gen(root, sub, depth + 1) end end
      end
      return v
    end
    if s.const ~= nil then return s.const end
    if s.enum then return s.enum[rand(#s.enum)] end
    local t = s.type
    if t == "string" then
      if s.format then
        local sid = s.format:match("^sid:(%u%u)$")
        return sid and (sid .. ("0123456789abcdef"):rep(2)) or SAMPLES[s.format] or "x"
      end
      if s.pattern then return s.pattern:find("%+") and "+14155550123" or "https://x.example" end
      local lengths = { s.minLength or 1, (s.minLength or 1) - 1, s.maxLength or 3, (s.maxLength or 3) + 1 }
      return ("s"):rep(math.max(0, lengths[rand(4)]))
    elseif t == "integer" or t == "number" then
      -- at and around the bounds
      local at = { s.minimum or 0, (s.minimum or 0) - 1, s.maximum or 5, (s.maximum or 5) + 1 }
      return at[rand(4)] + (t == "number" and 0.5 or 0)
    elseif t == "boolean" then return rand(2) == 1
    elseif t == "null" then return json.null
    elseif t == "array" or s.items then
      local out = {}
      local counts = { s.minItems or 0, (s.minItems or 1) - 1, s.maxItems or 2, (s.maxItems or 2) + 1 }
      for i = 1, math.min(counts[rand(4)], 30) do out[i] = gen(root, s.items or {}, depth + 1) end
      return #out == 0 and EMPTY or out
    elseif t == "object" or s.properties then
      local out = {}
      for k, sub in pairs(s.properties or {}) do
        if rand(3) > 1 then out[k] = gen(root, sub, depth + 1) end
      end
      for _, k in ipairs(s.required or {}) do
        if out[k] == nil and s.properties and s.properties[k] then out[k] = gen(root, s.properties[k], depth + 1) end
      end
      return out
    end
    return JUNK[rand(#JUNK)]
  end
  -- replace, drop or add one thing somewhere in v
  local function mutate(v, depth)
    if type(v) ~= "table" or v == EMPTY or depth > 5 or rand(4) == 1 then return JUNK[rand(#JUNK)] end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local r = rand(4)
    if #keys == 0 or r == 1 then v["unknown_" .. rand(3)] = JUNK[rand(#JUNK)]
    elseif r == 2 then v[keys[rand(#keys)]] = nil
    else local k = keys[rand(#keys)]; v[k] = mutate(v[k], depth + 1) end
    return v
  end

  it("gives validate's verdict on every tool's arguments and results, valid and broken", function()
    local checked, refused = 0, 0
    for _, name in ipairs(reg.order) do
      local t = reg.tools[name]
      for _, s in ipairs({ t.input_schema, t.output_schema, t.result_schema }) do
        for _ = 1, 150 do
          local v = gen(s, s, 0)
          if rand(2) == 1 then v = mutate(v, 0) end
          local full = #schema.errors(s, v) == 0
          assert.equal(full, schema.conforms(s, v), name .. ": " .. json.encode(v))
          checked = checked + 1
          if not full then refused = refused + 1 end
        end
      end
    end
    -- both verdicts came up many times
    assert.truthy(refused > checked / 5 and refused < checked * 4 / 5, refused .. " of " .. checked)
  end)
end)
