-- MCP over the agent socket, end to end: a real server process, a real
-- Unix socket, a real SQLite file and a local HTTP upstream.
local H = require("helpers")
local loop = require("core.loop")
local json = require("switchboard.json")

describe("MCP server", function()
  local up, srv, token

  setup(function()
    up = H.upstream()
    srv = H.server({ config = { tool_settings = { example_fetch = { base_url = up.url } },
                                limits = { connections = 400, connections_per_uid = 400, line_bytes = 4096,
                                           idle_seconds = 30 },
                                tool_dirs = { H.ROOT .. "/examples/tools", H.ROOT .. "/tests/fixtures/tools" } } })
    token = srv.agent("acme", "bot", "caioo", "Examples")
  end)

  teardown(function()
    srv.stop()
    up.stop()
  end)

  local function session(version)
    local c = assert(H.client(srv.agent_socket))
    local r = c:initialize(token, version)
    assert.is_table(r.result, "initialize failed: " .. json.encode(r))
    return c, r
  end

  it("negotiates each supported protocol version and answers the latest otherwise", function()
    H.async(function()
      for _, v in ipairs({ "2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25" }) do
        local c, r = session(v)
        assert.equal(v, r.result.protocolVersion)
        assert.equal("switchboard", r.result.serverInfo.name)
        assert.is_true(r.result.capabilities.tools.listChanged)
        c:close()
      end
      local c, r = session("2099-01-01")
      assert.equal("2025-11-25", r.result.protocolVersion)
      c:close()
    end)
  end)

  it("refuses initialize without a valid agent token, and other methods before initialize", function()
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      local r = c:request("tools/list", {})
      assert.equal(-32600, r.error.code)
      assert.truthy(r.error.message:find("initialize"))
      local p = c:request("ping", {})
      assert.same({}, p.result)
      r = c:initialize("sbt_not-a-real-token-at-all-000000")
      assert.equal(-32010, r.error.code)
      r = c:initialize(nil)
      assert.equal(-32010, r.error.code)
      c:close()
    end)
  end)

  it("lists the agent's tools with schemas and annotations and calls one", function()
    H.async(function()
      local c = session()
      local r = c:request("tools/list", {})
      local names = {}
      for _, t in ipairs(r.result.tools) do
        names[#names + 1] = t.name
        assert.equal("object", t.inputSchema.type)
        assert.is_boolean(t.annotations.readOnlyHint)
      end
      assert.same({ "example_clock", "example_fetch" }, names)
      r = c:call("example_clock", {})
      assert.is_nil(r.result.isError)
      assert.is_number(r.result.structuredContent.unix)
      assert.truthy(math.abs(r.result.structuredContent.unix - os.time()) < 5)
      assert.equal("text", r.result.content[1].type)
      r = c:call("example_fetch", { path = "/hello.json" })
      assert.equal(200, r.result.structuredContent.status)
      assert.equal("world", r.result.structuredContent.json.hello)
      c:close()
    end)
  end)

  it("drops structuredContent for clients older than 2025-06-18", function()
    H.async(function()
      local c = session("2025-03-26")
      local r = c:call("example_clock", {})
      assert.is_nil(r.result.structuredContent)
      assert.truthy(r.result.content[1].text:find("It is"))
      c:close()
    end)
  end)

  it("answers each JSON-RPC error with its code and keeps the connection open", function()
    H.async(function()
      local c = session()
      c:send_raw("{this is not json")
      local m = c:recv()
      assert.equal(-32700, m.error.code)
      assert.equal(json.null, m.id)
      c:send_raw('{"id": 7, "method": "ping"}')
      m = c:recv()
      assert.equal(-32600, m.error.code)
      c:send_raw('{"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}')
      m = c:recv()
      assert.equal(-32600, m.error.code)
      local r = c:request("resources/list", {})
      assert.equal(-32601, r.error.code)
      r = c:call("no_such_tool", {})
      assert.equal(-32602, r.error.code)
      assert.truthy(r.error.message:find("no_such_tool", 1, true))
      r = c:request("tools/call", { arguments = {} })
      assert.equal(-32602, r.error.code)
      r = c:request("tools/call", { name = "example_clock", arguments = { 1, 2 } })
      assert.equal(-32602, r.error.code)
      r = c:request("tools/list", { cursor = "nope" })
      assert.equal(-32602, r.error.code)
      c:send_raw('[{"jsonrpc":"2.0","id":1,"method":"ping"}]')
      m = c:recv()
      assert.equal(-32600, m.error.code)
      -- id 0 is a real id
      c:send({ id = 0, method = "ping" })
      m = c:recv()
      assert.equal(0, m.id)
      assert.same({}, m.result)
      -- a notification gets no answer: the next message is the ping's
      c:send({ method = "notifications/whatever" })
      r = c:request("ping", {})
      assert.same({}, r.result)
      c:close()
    end)
  end)

  it("answers a 2025-03-26 batch with one array and refuses batches otherwise", function()
    H.async(function()
      local c = session("2025-03-26")
      c:send_raw('[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"},'
        .. '{"jsonrpc":"2.0","id":"two","method":"tools/list"}]')
      local m = c:recv()
      assert.equal(2, #m)
      assert.equal(1, m[1].id)
      assert.same({}, m[1].result)
      assert.equal("two", m[2].id)
      assert.equal(2, #m[2].result.tools)
      c:close()
      local d = session("2025-11-25")
      d:send_raw('[{"jsonrpc":"2.0","id":1,"method":"ping"}]')
      assert.equal(-32600, d:recv().error.code)
      d:close()
    end)
  end)

  it("keeps request ids 1 and \"1\" apart when cancelling", function()
    H.async(function()
      local c = session()
      c:send({ id = 1, method = "tools/call", params = { name = "example_fetch", arguments = { path = "/slow?ms=400" } } })
      c:send({ id = "1", method = "tools/call", params = { name = "example_fetch", arguments = { path = "/slow?ms=400" } } })
      c:send({ method = "notifications/cancelled", params = { requestId = "1" } })
      local m = c:recv(3)
      assert.equal(1, m.id)
      assert.equal(200, m.result.structuredContent.status)
      assert.is_nil(c:recv(1))
      c:close()
    end)
  end)

  it("reports invalid arguments as isError naming the field and the rule", function()
    H.async(function()
      local c = session()
      local r = c:call("example_clock", { tz = 5 })
      assert.is_true(r.result.isError)
      assert.truthy(r.result.content[1].text:find("`tz` must be a string", 1, true))
      r = c:call("example_clock", { tz = "CET" })
      assert.truthy(r.result.content[1].text:find('`tz` must be one of "UTC"', 1, true))
      r = c:call("example_clock", { color = "red" })
      assert.truthy(r.result.content[1].text:find("`color` is not a known argument", 1, true))
      r = c:call("example_fetch", {})
      assert.truthy(r.result.content[1].text:find("`path` is required", 1, true))
      r = c:call("example_fetch", { path = "http://evil/" })
      assert.is_true(r.result.isError)
      assert.truthy(r.result.content[1].text:find("path", 1, true))
      c:close()
    end)
  end)

  it("answers an oversize line with an error and reads the next line", function()
    H.async(function()
      local c = session()
      c:send_raw('{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' .. string.rep("x", 10000) .. '"}}')
      local m = c:recv()
      assert.equal(-32600, m.error.code)
      assert.truthy(m.error.message:find("too large"))
      local r = c:request("ping", {})
      assert.same({}, r.result)
      c:close()
    end)
  end)

  it("stops answering a cancelled call and keeps serving the connection", function()
    H.async(function()
      local c = session()
      c:send({ id = 99, method = "tools/call", params = { name = "example_fetch", arguments = { path = "/slow?ms=600" } } })
      loop.sleep(0.1)
      c:send({ method = "notifications/cancelled", params = { requestId = 99, reason = "user" } })
      local r = c:request("ping", {})
      assert.same({}, r.result)
      -- nothing arrives for id 99, even after the upstream answered
      local m = c:recv(1.0)
      assert.is_nil(m)
      c:close()
    end)
  end)

  it("does not let one slow upstream call delay 100 calls on other connections", function()
    H.async(function()
      local slow = session()
      slow:send({ id = 1, method = "tools/call", params = { name = "example_fetch", arguments = { path = "/slow?ms=2000" } } })
      loop.sleep(0.05)
      local t0 = loop.time()
      local clients = {}
      for i = 1, 10 do clients[i] = session() end
      local done, results = 0, {}
      local me = coroutine.running()
      for i = 1, 10 do
        loop.spawn(function()
          for _ = 1, 10 do
            local r = clients[i]:call("example_clock", {})
            results[#results + 1] = r.result and not r.result.isError
          end
          done = done + 1
          if done == 10 then loop.wake(me) end
        end)
      end
      loop.wait()
      local elapsed = loop.time() - t0
      assert.equal(100, #results)
      for _, ok in ipairs(results) do assert.is_true(ok) end
      -- done before the slow call's 2 s: the slow call did not hold them (on
      -- a loaded machine the 100 calls alone can take more than a second)
      assert.truthy(elapsed < 1.9, ("100 calls took %.3f s"):format(elapsed))
      local r = slow:wait(1, 5)
      assert.equal(200, r.result.structuredContent.status)
      assert.truthy(loop.time() - t0 >= 1.5)
      for i = 1, 10 do clients[i]:close() end
      slow:close()
    end, 30)
  end)

  it("takes 64 calls in flight on one connection with the default limits.calls_per_connection", function()
    local waiter = srv.agent("acme", "waiter", "caioo", "Tests")
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      assert.is_table(c:initialize(waiter).result)
      for i = 1, 64 do
        c:send({ id = i, method = "tools/call", params = { name = "test_wait", arguments = { ms = 300 } } })
      end
      for i = 1, 64 do
        local r = assert(c:wait(i, 20))
        assert.is_nil(r.error, json.encode(r.error))
        assert.is_nil(r.result.isError, json.encode(r.result))
      end
      c:close()
    end, 40)
  end)

  it("serves 200 concurrent connections", function()
    H.async(function()
      local clients = {}
      for i = 1, 200 do
        clients[i] = assert(H.client(srv.agent_socket))
      end
      local ok, me, done = 0, coroutine.running(), 0
      for i = 1, 200 do
        loop.spawn(function()
          local r = clients[i]:initialize(token)
          if r and r.result then
            local c = clients[i]:call("example_clock", {})
            if c and c.result and c.result.structuredContent then ok = ok + 1 end
          end
          done = done + 1
          if done == 200 then loop.wake(me) end
        end)
      end
      loop.wait()
      assert.equal(200, ok)
      for i = 1, 200 do clients[i]:close() end
    end, 60)
  end)

  it("keeps the execution ids two agents chose apart", function()
    local token2 = srv.agent("acme", "bot2", "caioo", "Examples")
    local meta = { ["io.switchboard/execution"] = "shared-run-1" }
    H.async(function()
      for _, t in ipairs({ token, token2, token }) do
        local c = assert(H.client(srv.agent_socket))
        assert.is_table(c:initialize(t).result)
        assert.is_nil(c:call("example_clock", {}, meta).result.isError)
        c:close()
      end
    end)
    local r = srv.admin("executions --tenant acme")
    local mine = {}
    for _, e in ipairs(r.executions) do
      if e.id == "shared-run-1" then mine[e.agent] = #e.calls end
    end
    assert.same({ bot = 2, bot2 = 1 }, mine)
    local out, code, err = srv.admin("execution show shared-run-1 --tenant acme")
    assert.equal(1, code, tostring(out))
    assert.truthy(err:find("bot, bot2", 1, true), err)
    out, code = srv.admin("execution show shared-run-1 --tenant acme --agent bot2")
    assert.equal(0, code, tostring(out))
    assert.equal("shared-run-1", out.id)
    assert.equal("bot2", out.agent)
    assert.equal(1, #out.calls)
    out = srv.admin("execution show shared-run-1 --tenant acme --agent bot")
    assert.equal(2, #out.calls)
  end)

  it("survives a client that sends garbage and disconnects mid-call", function()
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      c:send_raw("\0\1\2garbage\255\254")
      c:initialize(token)
      c:send({ id = 5, method = "tools/call", params = { name = "example_fetch", arguments = { path = "/slow?ms=300" } } })
      c:close()
      loop.sleep(0.5)
      local d = session()
      local r = d:call("example_clock", {})
      assert.is_nil(r.result.isError)
      d:close()
    end)
    assert.is_true(srv.alive())
  end)
end)
