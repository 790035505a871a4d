-- The agent socket under hostile input: ids no JSON answer can carry,
-- connections that never initialize, one user taking every slot, huge
-- batches, invalid UTF-8, and progress that goes backwards. Real server
-- process, real Unix sockets.
local H = require("helpers")
local loop = require("core.loop")
local json = require("switchboard.json")

local BAD_ID_LINE = '{"jsonrpc":"2.0","id":1e400,"method":"ping"}'

local function status(srv)
  local r = srv.admin("status")
  assert.is_table(r, "status failed: " .. tostring(r))
  return r
end

-- poll (yielding) until pred() holds; fails after `seconds`
local function eventually(pred, seconds, what)
  local deadline = loop.time() + (seconds or 20)
  while not pred() do
    if loop.time() > deadline then error("timed out waiting for " .. what, 2) end
    loop.sleep(0.05)
  end
end

describe("agent socket", function()
  local srv, token

  setup(function()
    srv = H.server({ config = {
      tool_dirs = { H.ROOT .. "/examples/tools", H.ROOT .. "/tests/fixtures/tools" },
      agent_socket_mode = "0666",
      limits = { initialize_seconds = 1, connections_per_uid = 3, batch_items = 8, idle_seconds = 30 },
    } })
    token = srv.agent("acme", "bot", "caioo", "Examples,Tests")
  end)

  teardown(function() srv.stop() end)

  local function session(version)
    local c = assert(H.client(srv.agent_socket))
    local r = c:initialize(token, version)
    assert.is_table(r.result, "initialize failed: " .. json.encode(r))
    return c
  end

  it("answers ids that are not exact integers or strings with -32600 and keeps the connection", function()
    H.async(function()
      local c = session()
      for _, id in ipairs({ "1e400", "-1e400", "9223372036854775808", "18446744073709551616", "-0.5", "1.5",
                            "9007199254740993" }) do
        c:send_raw('{"jsonrpc":"2.0","id":' .. id .. ',"method":"ping"}')
        local m = assert(c:recv(5), "no answer for id " .. id)
        assert.equal(-32600, m.error.code, "id " .. id)
        assert.equal(json.null, m.id)
        assert.truthy(m.error.message:find("id", 1, true))
      end
      -- NaN is not JSON at all
      c:send_raw('{"jsonrpc":"2.0","id":NaN,"method":"ping"}')
      assert.equal(-32700, c:recv(5).error.code)
      -- an integral float is an integer id and comes back as one
      c:send_raw('{"jsonrpc":"2.0","id":12.0,"method":"ping"}')
      local m = c:recv(5)
      assert.equal(12, m.id)
      assert.same({}, m.result)
      c:close()
    end)
  end)

  it("frees every slot after 300 connections that each sent an unanswerable id", function()
    H.async(function()
      for i = 1, 300 do
        local c = assert(H.client(srv.agent_socket))
        c:send_raw(BAD_ID_LINE)
        local m = c:recv(5)
        assert.is_table(m, "connection " .. i .. " got no answer")
        assert.equal(-32600, m.error.code)
        c:close()
      end
      eventually(function() return status(srv).connections == 0 end, 20, "the connections to close")
      local c = session()
      assert.same({}, c:request("ping", {}).result)
      assert.equal(1, status(srv).connections)
      c:close()
    end, 120)
  end)

  it("answers an unencodable id on the admin socket and keeps serving that connection", function()
    H.async(function()
      local a = assert(loop.connect(srv.admin_socket))
      a:write('{"jsonrpc":"2.0","id":1e400,"method":"server.status"}\n')
      local m = json.decode(assert(a:read_line(1048576, 5)))
      assert.equal(json.null, m.id)
      assert.is_table(m.error)
      a:write('{"jsonrpc":"2.0","id":2,"method":"server.status"}\n')
      m = json.decode(assert(a:read_line(1048576, 5)))
      assert.equal(2, m.id)
      assert.is_number(m.result.connections)
      a:close()
    end)
  end)

  it("closes a connection that has not initialized by limits.initialize_seconds, blank lines or not", function()
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      local t0 = loop.time()
      local stop = false
      loop.spawn(function()
        while not stop and not c.s:closed() do
          c:send_raw("")
          loop.sleep(0.2)
        end
      end)
      local m = c:recv(15)
      assert.is_table(m, "the connection was not closed by its initialize deadline")
      assert.equal(-32600, m.error.code)
      assert.truthy(m.error.message:find("limits.initialize_seconds", 1, true))
      local gone, err = c:recv(15)
      stop = true
      assert.is_nil(gone)
      -- closed by the server: an end of file, or a reset when a blank line
      -- of ours reached its socket after it stopped reading
      assert.truthy(err == "closed" or err == "connection reset by peer", err)
      assert.truthy(loop.time() - t0 < 14)
      c:close()
      -- an initialized session is not bound by it
      local s = session()
      loop.sleep(1.5)
      assert.same({}, s:request("ping", {}).result)
      s:close()
    end, 40)
  end)

  it("caps connections per peer uid and keeps serving other users", function()
    H.async(function()
      eventually(function() return status(srv).connections == 0 end, 20, "earlier connections to close")
      local mine = {}
      for i = 1, 3 do mine[i] = session() end
      local ok, err = pcall(function()
      local extra = assert(H.client(srv.agent_socket))
      local m = extra:recv(5)
      assert.is_table(m, "a fourth connection of the same uid was not refused")
      assert.equal(-32000, m.error.code)
      assert.truthy(m.error.message:find("limits.connections_per_uid", 1, true))
      assert.is_nil(extra:recv(5))
      extra:close()
      -- another local user (nobody) still gets in and initializes
      -- (the test directories are 0700: let nobody through to the socket)
      os.execute(("chmod 0711 %s %s"):format(H.q(H.TMP), H.q(srv.dir)))
      local script = srv.dir .. "/other_user.py"
      H.write(script, table.concat({
        "import socket, sys, json",
        "s = socket.socket(socket.AF_UNIX)",
        "s.connect(sys.argv[1])",
        "tok = sys.stdin.read().strip()",
        "s.sendall((json.dumps({'jsonrpc': '2.0', 'id': 1, 'method': 'initialize', 'params': {",
        "  'protocolVersion': '2025-06-18', 'capabilities': {}, 'clientInfo': {'name': 'x', 'version': '1'},",
        "  '_meta': {'io.switchboard/token': tok}}}) + '\\n').encode())",
        "f = s.makefile('rb')",
        "print(f.readline().decode().strip())",
      }, "\n") .. "\n")
      os.execute("chmod 0644 " .. H.q(script))
      local out = H.sh(("printf '%%s' %s | setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 %s %s 2>&1")
        :format(H.q(token), H.q(script), H.q(srv.agent_socket)))
      local r = json.decode(out)
      assert.is_table(r, "the other user got: " .. out)
      assert.equal("2025-06-18", r.result and r.result.protocolVersion, out)
      end)
      for i = 1, 3 do mine[i]:close() end
      assert(ok, err)
      -- the slots of the uid are free again
      eventually(function() return status(srv).connections == 0 end, 20, "the connections to close")
      local again = session()
      again:close()
    end, 60)
  end)

  it("refuses a batch over limits.batch_items and answers one within it", function()
    H.async(function()
      local c = session("2025-03-26")
      local items = {}
      for i = 1, 9 do items[i] = ('{"jsonrpc":"2.0","id":%d,"method":"ping"}'):format(i) end
      c:send_raw("[" .. table.concat(items, ",") .. "]")
      local m = c:recv(5)
      assert.equal(-32600, m.error.code)
      assert.truthy(m.error.message:find("limits.batch_items", 1, true))
      assert.truthy(m.error.message:find("at most 8", 1, true))
      c:send_raw("[" .. table.concat(items, ",", 1, 8) .. "]")
      m = c:recv(5)
      assert.equal(8, #m)
      for i = 1, 8 do assert.equal(i, m[i].id) end
      c:close()
    end)
  end)

  it("refuses invalid UTF-8 with -32700 and never sends invalid UTF-8", function()
    H.async(function()
      local c = session()
      for _, line in ipairs({
        '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\255"}}',
        '{"jsonrpc":"2.0","id":"\237\160\128","method":"ping"}', -- an encoded surrogate
        '{"jsonrpc":"2.0","id":"\192\128","method":"ping"}', -- an overlong NUL
        '{"jsonrpc":"2.0","id":"\244\144\128\128","method":"ping"}', -- above U+10FFFF
        '{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}', -- a lone surrogate escape
      }) do
        c:send_raw(line)
        local raw = assert(c.s:read_line(1048576, 5))
        assert.truthy(utf8.len(raw), "the answer is not valid UTF-8")
        local m = json.decode(raw)
        assert.equal(-32700, m.error.code, line)
        assert.equal(json.null, m.id)
      end
      c:send({ id = 2, method = "tools/call", params = { name = "test_bad_bytes", arguments = {} } })
      local raw = assert(c.s:read_line(1048576, 5))
      assert.truthy(utf8.len(raw), "a tool's invalid UTF-8 was sent on")
      local m = json.decode(raw)
      assert.equal(2, m.id)
      assert.is_table(m.error)
      assert.same({}, c:request("ping", {}).result)
      c:close()
    end)
  end)

  it("sends a token's progress only when it increases", function()
    H.async(function()
      local c = session()
      local r = c:request("tools/call", { name = "test_progress", arguments = {}, _meta = { progressToken = "p1" } })
      assert.equal("done", r.result.content[1].text)
      local seen = {}
      for _, n in ipairs(c.notes) do
        if n.method == "notifications/progress" then
          assert.equal("p1", n.params.progressToken)
          seen[#seen + 1] = n.params.progress
          assert.equal(100, n.params.total)
        end
      end
      assert.same({ 0, 50, 100 }, seen)
      c:close()
    end)
  end)

  it("gives a tool its call's context, never the master key or the database", function()
    H.async(function()
      local c = session()
      local r = c:call("test_ctx", {})
      local text = assert(r.result, json.encode(r)).content[1].text
      local keys, found = text:match("^(.-)|(.*)$")
      local have = {}
      for k in keys:gmatch("[^,]+") do have[k] = true end
      assert.is_true(have.settings and have.tenant and have.agent and have.progress and have.cancelled, keys)
      assert.is_nil(have.rt, keys)
      assert.is_nil(have.config, keys)
      assert.is_nil(found:find("core.vault.Master", 1, true), found)
      assert.is_nil(found:find("core.store.Db", 1, true), found)
      c:close()
    end)
  end)

  it("writes an id an agent chose to the log with its control characters escaped", function()
    local id = "x\27]0;pwned\7\27[2J\u{9b}1m"
    H.async(function()
      local c = session()
      c:send({ id = id, method = "tools/call", params = { name = "test_wait", arguments = { ms = 3000 } } })
      loop.sleep(0.2)
      c:send({ method = "notifications/cancelled", params = { requestId = id } })
      eventually(function()
        return (H.read(srv.log) or ""):find("cancelled by the client", 1, true) ~= nil
      end, 20, "the cancel in the log")
      c:close()
    end)
    local log = H.read(srv.log)
    assert.truthy(log:find("request x\\x1b]0;pwned\\x07\\x1b[2J\\u009b1m cancelled", 1, true), log)
    assert.is_nil(log:find("[\27\7]"))
    assert.is_nil(log:find("\u{9b}", 1, true))
  end)
end)
