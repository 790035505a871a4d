-- MCP 2026-07-28 as the official v2 client (@modelcontextprotocol/client
-- 2.4.0) speaks it: what its codec requires of results (ttlMs and
-- cacheScope on tools/list and server/discover, serverInfo in _meta), the
-- subscriptions/listen acknowledgement, routing headers on requests only
-- (-32020 HeaderMismatch to the request's id), and the token added by
-- `switchboard connect` to each stateless request. A real server process,
-- core.http (libcurl) over loopback TCP, the agent socket, the real bridge.
local H = require("helpers")
local loop = require("core.loop")
local http = require("core.http")
local httpd = require("core.httpd")
local json = require("switchboard.json")

local MODERN = "2026-07-28"
local SERVER_KEY = "io.modelcontextprotocol/serverInfo"
local SUB_KEY = "io.modelcontextprotocol/subscriptionId"

local function free_port()
  local s = assert(httpd.listen{ port = 0, handler = function() return 200, {}, "" end })
  local p = s:port()
  s:close()
  return p
end

local function meta(extra)
  local m = { ["io.modelcontextprotocol/protocolVersion"] = MODERN,
              ["io.modelcontextprotocol/clientCapabilities"] = {},
              ["io.modelcontextprotocol/clientInfo"] = { name = "spec", version = "1" } }
  for k, v in pairs(extra or {}) do m[k] = v end
  return m
end

describe("MCP 2026-07-28 as the v2 client speaks it", function()
  local srv, base, token

  setup(function()
    local port = free_port()
    srv = H.server({ config = { http = { listen = "127.0.0.1:" .. port },
      tool_dirs = { H.ROOT .. "/examples/tools", H.ROOT .. "/tests/fixtures/tools" } } })
    H.wait_for(function() return (H.read(srv.log) or ""):find("http: MCP on", 1, true) ~= nil end, 10, "http listener")
    base = "http://127.0.0.1:" .. port
    token = srv.agent("acme", "v2", "caioo", "Examples")
  end)

  teardown(function() srv.stop() end)

  local function post(msg, headers)
    local h = { ["Content-Type"] = "application/json", Accept = "application/json, text/event-stream",
                Authorization = "Bearer " .. token, ["MCP-Protocol-Version"] = MODERN }
    for k, v in pairs(headers or {}) do h[k] = v end
    local res = assert(http.request{ method = "POST", url = base .. "/mcp", headers = h, body = json.encode(msg) })
    local ctype = res.headers["content-type"] or ""
    if ctype:find("event-stream", 1, true) then
      local out = {}
      for data in res.body:gmatch("data: ([^\n]*)\n") do out[#out + 1] = json.decode(data) end
      return res, out[#out]
    end
    return res, res.body ~= "" and ctype:find("json", 1, true) and json.decode(res.body) or nil
  end

  it("gives tools/list and server/discover results their cache fields and every result the serverInfo", function()
    H.async(function()
      local res, m = post({ jsonrpc = "2.0", id = 1, method = "tools/list", params = { _meta = meta() } },
        { ["Mcp-Method"] = "tools/list" })
      assert.equal(200, res.status, res.body)
      assert.equal("complete", m.result.resultType)
      assert.equal(0, m.result.ttlMs)
      assert.equal("private", m.result.cacheScope)
      assert.equal("switchboard", m.result._meta[SERVER_KEY].name)
      res, m = post({ jsonrpc = "2.0", id = 2, method = "server/discover", params = { _meta = meta() } },
        { ["Mcp-Method"] = "server/discover" })
      assert.equal(200, res.status, res.body)
      assert.equal(0, m.result.ttlMs)
      assert.equal("private", m.result.cacheScope)
      assert.equal("switchboard", m.result._meta[SERVER_KEY].name)
      res, m = post({ jsonrpc = "2.0", id = 3, method = "tools/call",
        params = { name = "example_clock", arguments = {}, _meta = meta() } },
        { ["Mcp-Method"] = "tools/call", ["Mcp-Name"] = "example_clock" })
      assert.equal(200, res.status, res.body)
      assert.falsy(m.result.isError)
      assert.equal("switchboard", m.result._meta[SERVER_KEY].name)
      assert.is_nil(m.result.ttlMs, "a tools/call result is not cacheable")
    end)
  end)

  it("takes a 2026-07-28 notification without routing headers; a request's mismatch is -32020 to its id", function()
    H.async(function()
      -- the v2 client sends Mcp-Method with requests only
      local res = post({ jsonrpc = "2.0", method = "notifications/cancelled",
        params = { requestId = "listen:0", _meta = meta() } })
      assert.equal(202, res.status, res.body)
      local m
      res, m = post({ jsonrpc = "2.0", id = "r-7", method = "tools/list", params = { _meta = meta() } },
        { ["Mcp-Method"] = "tools/call" })
      assert.equal(400, res.status)
      assert.equal(-32020, m.error.code)
      assert.equal("r-7", m.id)
      assert.matches("Mcp%-Method", m.error.message)
      res, m = post({ jsonrpc = "2.0", id = 8, method = "tools/call",
        params = { name = "example_clock", arguments = {}, _meta = meta() } }, { ["Mcp-Method"] = "tools/call" })
      assert.equal(400, res.status)
      assert.equal(-32020, m.error.code)
      assert.equal(8, m.id)
      assert.matches("Mcp%-Name", m.error.message)
      res, m = post({ jsonrpc = "2.0", id = 9, method = "tools/list", params = { _meta = meta() } },
        { ["Mcp-Method"] = "tools/list", ["MCP-Protocol-Version"] = "2025-11-25" })
      assert.equal(400, res.status)
      assert.equal(-32020, m.error.code)
      assert.equal(9, m.id)
    end)
  end)

  it("acknowledges subscriptions/listen with the filter it honours, then sends list changes", function()
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      local m = meta({ ["io.switchboard/token"] = token })
      c:send({ jsonrpc = "2.0", id = "listen:1", method = "subscriptions/listen",
        params = { _meta = m, notifications = { toolsListChanged = true, promptsListChanged = true } } })
      local ack = assert(c:recv(5))
      assert.equal("notifications/subscriptions/acknowledged", ack.method)
      assert.equal("listen:1", ack.params._meta[SUB_KEY])
      assert.same({ toolsListChanged = true }, ack.params.notifications)
      srv.admin("agent groups v2 --tenant acme +Tests")
      local note = assert(c:recv(5))
      assert.equal("notifications/tools/list_changed", note.method)
      assert.equal("listen:1", note.params._meta[SUB_KEY])
      c:send({ jsonrpc = "2.0", method = "notifications/cancelled", params = { requestId = "listen:1" } })
      -- a filter without tools: acknowledged with nothing, and nothing comes
      c:send({ jsonrpc = "2.0", id = "listen:2", method = "subscriptions/listen",
        params = { _meta = m, notifications = { resourcesListChanged = true } } })
      ack = assert(c:recv(5))
      assert.equal("notifications/subscriptions/acknowledged", ack.method)
      assert.equal("listen:2", ack.params._meta[SUB_KEY])
      assert.same({}, ack.params.notifications)
      srv.admin("agent groups v2 --tenant acme -Tests")
      local none, why = c:recv(1)
      assert.is_nil(none, "a subscription without toolsListChanged was notified")
      assert.equal("timeout", why)
      -- a filter that is not an object is refused, named
      local r = c:request("subscriptions/listen", { _meta = m, notifications = "tools" })
      assert.equal(-32602, r.error.code)
      assert.matches("params.notifications", r.error.message, 1, true)
      c:close()
    end)
  end)

  it("switchboard connect adds the token to each 2026-07-28 request (no initialize on the bridge)", function()
    H.async(function()
      local dir = H.tmpdir("bridge")
      local reqs = {
        json.encode({ jsonrpc = "2.0", id = 1, method = "server/discover", params = { _meta = meta() } }),
        json.encode({ jsonrpc = "2.0", id = 2, method = "tools/list", params = { _meta = meta() } }),
        json.encode({ jsonrpc = "2.0", id = 3, method = "tools/call",
          params = { name = "example_clock", arguments = {}, _meta = meta() } }),
      }
      H.write(dir .. "/in.jsonl", table.concat(reqs, "\n") .. "\n")
      -- stdin stays open until the three answers are out (at most 20 s)
      local out = dir .. "/out.jsonl"
      H.sh(("(cat %s; for i in $(seq 200); do n=$(grep -c '\"id\":' %s 2>/dev/null);"
        .. " [ \"${n:-0}\" -ge 3 ] && break; sleep 0.1; done) | SWITCHBOARD_TOKEN=%s %s connect --socket %s > %s 2>%s/err")
        :format(H.q(dir .. "/in.jsonl"), H.q(out), H.q(token), H.q(H.BIN), H.q(srv.agent_socket), H.q(out), H.q(dir)))
      local got = {}
      for line in (H.read(out) or ""):gmatch("[^\n]+") do
        local m = json.decode(line)
        if m and m.id then got[m.id] = m end
      end
      assert.is_table(got[1], H.read(out))
      assert.equal(MODERN, got[1].result.supportedVersions[1])
      assert.is_table(got[2].result, json.encode(got[2]))
      assert.equal("private", got[2].result.cacheScope)
      assert.is_true(#got[2].result.tools >= 2)
      assert.is_table(got[3].result, json.encode(got[3]))
      assert.falsy(got[3].result.isError)
      loop.sleep(0)
    end)
  end)
end)
