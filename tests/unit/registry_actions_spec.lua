-- A tool of several actions declared as data (`actions = { name = {
-- schema, writes, sends, handler } }`): the registry composes the
-- input_schema, writes and sends, refuses a bad declaration naming the
-- field, and checks each call's arguments against the chosen action.
-- Run: ./switchboard exec /usr/bin/busted --lpath="$PWD/tests/?.lua" tests/unit/registry_actions_spec.lua
local schema = require("switchboard.schema")
local registry = require("switchboard.registry")

local function send() return { text = "sent" } end
local function check() return { text = "checked" } end

local TO = { type = "string", maxLength = 20, description = "Where." }

-- a tool that writes with one action and reads with the other; `edit`
-- changes the definition before the check
local function def(edit)
  local d = {
    name = "t", description = "d", group = "G", annotations = { readOnlyHint = false },
    actions = {
      send = { schema = { properties = { to = TO, body = { type = "string" },
                                         mode = { type = "string", enum = { "a", "b" }, default = "a" } },
                          required = { "to", "body" } },
               writes = true, sends = { recipient = "to", texts = { "body" } }, handler = send },
      check = { schema = { properties = { to = TO, code = { type = "string" } }, required = { "to" } },
                writes = false, handler = check },
    },
  }
  if edit then edit(d) end
  return d
end

local function refused(edit, want)
  local t, err = registry.check(def(edit))
  assert.is_nil(t, "the declaration was accepted; wanted: " .. want)
  assert.truthy(err:find(want, 1, true), ("%q does not say %q"):format(err, want))
end

-- validate as the pipeline does: the schema, then the action's own
local function call(tool, args)
  local v, err = schema.validate(tool.input_schema, args)
  if not v then return nil, err end
  local ok, aerr = registry.check_action(tool, v)
  if not ok then return nil, aerr end
  return v
end

describe("a tool declared by actions", function()
  local tool = assert(registry.check(def()))

  it("gets an input_schema composed of its actions'", function()
    local s = tool.input_schema
    assert.same({ type = "string", enum = { "check", "send" }, description = "check or send." }, s.properties.action)
    assert.equal(TO, s.properties.to)
    for _, p in ipairs({ "body", "mode", "code" }) do assert.is_table(s.properties[p], p) end
    assert.is_false(s.additionalProperties)
    -- `action`, then what every action requires
    assert.same({ "action", "to" }, s.required)
    assert.same(schema.export(s), tool.exported)
    assert.equal("https://json-schema.org/draft/2020-12/schema", tool.exported["$schema"])
  end)

  it("describes the action argument from the actions' descriptions when they give one", function()
    local t = assert(registry.check(def(function(d)
      d.actions.send.description = "sends the body"
      d.actions.check.description = "checks a code."
    end)))
    assert.equal("check: checks a code. send: sends the body.", t.input_schema.properties.action.description)
    t = assert(registry.check(def(function(d)
      d.actions.third = { handler = check }
    end)))
    assert.equal("check, send or third.", t.input_schema.properties.action.description)
  end)

  it("writes and sends per action", function()
    assert.is_true(registry.writes(tool, { action = "send" }))
    assert.is_false(registry.writes(tool, { action = "check" }))
    assert.same({ recipient = "to", texts = { "body" } }, registry.sends(tool, { action = "send" }))
    assert.is_nil(registry.sends(tool, { action = "check", to = "x" }))
    local o = registry.outbound(tool, { action = "send", to = "+14155550123", body = "hi" })
    assert.equal("+14155550123", o.recipient)
    assert.same({ { text = "hi", where = "the body", field = "body" } }, o.outbound)
    assert.is_nil(registry.outbound(tool, { action = "check", to = "+14155550123" }))
    -- every action writes: the tool writes; none does: it does not
    local all = assert(registry.check(def(function(d) d.actions.check.writes = true end)))
    assert.is_true(all.writes_spec)
    local none = assert(registry.check(def(function(d)
      d.actions.send.writes, d.actions.send.sends = false, nil
    end)))
    assert.is_false(none.writes_spec)
    -- a read-only tool's actions read unless told otherwise
    local ro = assert(registry.check({ name = "r", description = "d", group = "G",
      annotations = { readOnlyHint = true }, actions = { a = { handler = check }, b = { handler = check } } }))
    assert.is_false(ro.writes_spec)
  end)

  it("calls the chosen action's handler", function()
    assert.equal(send, registry.handler(tool, { action = "send" }))
    assert.equal(check, registry.handler(tool, { action = "check" }))
  end)

  it("refuses an argument the chosen action does not take, naming it and the action", function()
    local v, err = call(tool, { action = "check", to = "x", body = "hi" })
    assert.is_nil(v)
    assert.equal('`body` is not used with action "check" (`body` is only used with action "send")', err)
    v, err = call(tool, { action = "send", to = "x", body = "hi", code = "1234" })
    assert.is_nil(v)
    assert.equal('`code` is not used with action "send" (`code` is only used with action "check")', err)
    v, err = call(tool, { action = "check", to = "x", body = "hi", mode = "b" })
    assert.is_nil(v)
    assert.equal('`body`, `mode` are not used with action "check" (`body` is only used with action "send";'
      .. ' `mode` is only used with action "send")', err)
    -- one used by two other actions
    local t3 = assert(registry.check(def(function(d)
      d.actions.third = { schema = { properties = { body = { type = "string" } } }, writes = false, handler = check }
    end)))
    v, err = call(t3, { action = "check", to = "x", body = "hi" })
    assert.is_nil(v)
    assert.equal('`body` is not used with action "check" (`body` is only used with actions "send" and "third")', err)
    -- arguments that were not validated: one no action takes, no action at all
    assert.equal('`zip` is not used with action "check" (`zip` is not an argument of this tool)',
      select(2, registry.check_action(tool, { action = "check", to = "x", zip = 1 })))
    assert.equal('`action` must be one of "check" or "send"', select(2, registry.check_action(tool, { to = "x" })))
  end)

  it("lets through an argument of another action at its default (the validation puts it in every call)", function()
    local v = assert(call(tool, { action = "check", to = "x" }))
    assert.equal("a", v.mode)
    assert.truthy(call(tool, { action = "check", to = "x", mode = "a" }))
    assert.is_nil((call(tool, { action = "check", to = "x", mode = "b" })))
  end)

  it("refuses a call without what the chosen action requires", function()
    local v, err = call(tool, { action = "send", to = "x" })
    assert.is_nil(v)
    assert.equal('`body` is required for action "send"', err)
    -- what every action requires is the schema's own rule
    v, err = call(tool, { action = "check" })
    assert.is_nil(v)
    assert.truthy(err:find("`to` is required", 1, true))
    v, err = call(tool, { action = "close", to = "x" })
    assert.is_nil(v)
    assert.truthy(err:find("`action` must be one of", 1, true))
    assert.truthy(call(tool, { action = "send", to = "x", body = "hi" }))
  end)

  it("leaves a tool without actions as it was", function()
    local t = assert(registry.check({ name = "plain", description = "d", group = "G",
      annotations = { readOnlyHint = true }, input_schema = { type = "object", properties = { a = { type = "string" } } },
      handler = check }))
    assert.is_nil(t.actions)
    assert.truthy(registry.check_action(t, { a = "x", b = 1 }))
    assert.equal(check, registry.handler(t, { a = "x" }))
  end)
end)

describe("a bad actions declaration", function()
  it("is refused naming the field and the rule", function()
    local cases = {
      { function(d) d.actions = {} end, "actions: must be a table of action name" },
      { function(d) d.actions = "send" end, "actions: must be a table of action name" },
      { function(d) d.actions["bad name"] = { handler = check } end, 'actions: the action name "bad name" must be' },
      { function(d) d.actions[1] = { handler = check } end, "actions: the action name [1] must be" },
      { function(d) d.actions.check = true end, "actions.check: must be a table" },
      { function(d) d.actions.check.run = check end, "actions.check.run: unknown field" },
      { function(d) d.actions.check.description = "bad\0" end, "actions.check.description: must be" },
      { function(d) d.actions.check.schema = "x" end, "actions.check.schema: must be a table" },
      { function(d) d.actions.check.schema.type = "object" end, "actions.check.schema.type: unknown field" },
      { function(d) d.actions.check.schema.properties.action = { type = "string" } end,
        "actions.check.schema.properties.action: `action` is the tool's own argument" },
      { function(d) d.actions.check.schema.properties.code = { type = "strng" } end,
        "actions.check.schema.properties.code" },
      { function(d) d.actions.check.schema.required = { "to", "cod" } end,
        "actions.check.schema.required[2]: 'cod' is not a declared property" },
      { function(d) d.actions.check.schema.properties.to = { type = "string" } end,
        'actions.send.schema.properties.to: differs from the property to of action "check"' },
      { function(d) d.actions.check.writes = "no" end, "actions.check.writes: must be true or false" },
      { function(d) d.annotations.readOnlyHint = true end, "actions.send.writes: a tool with readOnlyHint = true" },
      { function(d) d.actions.check.handler = nil end, "actions.check.handler: must be a function(ctx, args)" },
      { function(d) d.actions.send.sends = { recipient = "code" } end,
        "actions.send.sends.recipient: must name an argument of the action" },
      { function(d) d.actions.send.sends = { recipient = "to", texts = { "code" } } end,
        "actions.send.sends.texts[1]: must name an argument of the action" },
      { function(d) d.actions.send.sends.via = "sms" end, "actions.send.sends.via: unknown field" },
      { function(d) d.actions.check.sends = { recipient = "to" } end,
        "actions.check.sends: an action that does not write sends nothing" },
      { function(d) d.input_schema = { type = "object" } end,
        "input_schema: a tool with actions declares it per action (actions.<name>.schema)" },
      { function(d) d.handler = check end, "handler: a tool with actions declares it per action" },
      { function(d) d.writes = { "send" } end, "writes: a tool with actions declares it per action" },
      { function(d) d.sends = { recipient = "to" } end, "sends: a tool with actions declares it per action" },
    }
    for _, c in ipairs(cases) do refused(c[1], c[2]) end
  end)

  it("of a tool without actions keeps its messages", function()
    local t, err = registry.check({ name = "x", description = "d", group = "G", annotations = { readOnlyHint = false },
      input_schema = { type = "object", properties = { to = { type = "string" } } }, handler = check,
      sends = { recipient = "too" } })
    assert.is_nil(t)
    assert.equal("sends.recipient: must name an argument of the input_schema", err)
    t, err = registry.check({ name = "x", description = "d", group = "G", annotations = { readOnlyHint = true },
      input_schema = { type = "object", properties = { to = { type = "string" } } }, handler = check,
      sends = { recipient = "to" } })
    assert.is_nil(t)
    assert.equal("sends: a tool that does not write sends nothing", err)
  end)
end)
