-- A tool declared by actions, through a real server and agent socket:
-- the composed inputSchema in tools/list, each action's own handler, and
-- the per-action argument rules as isError results (audited as invalid).
local H = require("helpers")
local json = require("switchboard.json")

describe("a tool declared by actions", function()
  local srv, token

  setup(function()
    srv = H.server({ config = { tool_dirs = { H.ROOT .. "/tests/fixtures/action_tools" } } })
    token = srv.agent("acme", "bot", "caioo", "Actions")
  end)

  teardown(function() srv.stop() end)

  local function session()
    local c = assert(H.client(srv.agent_socket))
    local r = c:initialize(token)
    assert.is_table(r.result, "initialize failed: " .. json.encode(r))
    return c
  end

  local function audit()
    return H.sql_rows(srv, "SELECT action, decision, outcome, detail FROM audit_log WHERE kind = 'call' ORDER BY id")
  end

  it("lists the composed inputSchema", function()
    H.async(function()
      local c = session()
      local tools = c:request("tools/list", {}).result.tools
      assert.equal(1, #tools)
      local s = tools[1].inputSchema
      assert.equal("https://json-schema.org/draft/2020-12/schema", s["$schema"])
      assert.same({ type = "string", enum = { "count", "echo" }, description = "count or echo." }, s.properties.action)
      assert.same({ type = "string", maxLength = 40 }, s.properties.text)
      assert.same({ type = "integer", minimum = 1, maximum = 9 }, s.properties.n)
      assert.same({ type = "integer", default = 1 }, s.properties.step)
      assert.same({ "action" }, s.required)
      assert.is_false(s.additionalProperties)
      c:close()
    end)
  end)

  it("calls the chosen action's handler and refuses what the action does not take", function()
    H.async(function()
      local c = session()
      local r = c:call("test_actions", { action = "echo", text = "hi" }).result
      assert.is_nil(r.isError)
      assert.equal("echo: hi", r.content[1].text)
      assert.same({ action = "echo", text = "hi" }, r.structuredContent)
      r = c:call("test_actions", { action = "count", n = 3 }).result
      assert.is_nil(r.isError)
      assert.same({ action = "count", n = 3 }, r.structuredContent)
      r = c:call("test_actions", { action = "echo", text = "hi", n = 3 }).result
      assert.is_true(r.isError)
      assert.equal('Invalid arguments: `n` is not used with action "echo" (`n` is only used with action "count")',
        r.content[1].text)
      r = c:call("test_actions", { action = "count" }).result
      assert.is_true(r.isError)
      assert.equal('Invalid arguments: `n` is required for action "count"', r.content[1].text)
      -- step at its default is in every call after the validation; another value is the agent's
      assert.is_nil(c:call("test_actions", { action = "echo", text = "hi", step = 1 }).result.isError)
      r = c:call("test_actions", { action = "echo", text = "hi", step = 2 }).result
      assert.is_true(r.isError)
      assert.truthy(r.content[1].text:find('`step` is not used with action "echo"', 1, true))
      c:close()
    end)
    local rows
    H.wait_for(function()
      rows = audit()
      return #rows == 6
    end, 5, "the audit records")
    local seen = {}
    for i, row in ipairs(rows) do seen[i] = row.action .. " " .. row.decision .. " " .. row.outcome end
    assert.same({ "echo allow ok", "count allow ok", "echo invalid invalid", "count invalid invalid",
                  "echo allow ok", "echo invalid invalid" }, seen)
    assert.truthy(json.decode(rows[3].detail).error:find("`n` is not used with action", 1, true))
  end)
end)
