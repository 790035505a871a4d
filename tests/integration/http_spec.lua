-- MCP over Streamable HTTP, end to end: a real server process listening on
-- a loopback TCP port, real agents and tokens, the audit trail in a real
-- SQLite file; the client is core.http (libcurl) and, for event streams
-- that stay open, curl in the background.
local H = require("helpers")
local loop = require("core.loop")
local http = require("core.http")
local httpd = require("core.httpd")
local json = require("switchboard.json")

-- A port free right now (bound on 0, then released).
local function free_port()
  local s = assert(httpd.listen{ port = 0, handler = function() return 200, {}, "" end })
  local p = s:port()
  s:close()
  return p
end

describe("MCP over HTTP", function()
  local srv, base, tok_a, tok_b, up

  setup(function()
    up = H.upstream()
    local port = free_port()
    srv = H.server({ config = {
      http = { listen = "127.0.0.1:" .. port, allowed_origins = { "https://app.example.com" },
               allowed_hosts = { "mcp.example.com" } },
      tool_settings = { example_fetch = { base_url = up.url } },
      tool_dirs = { H.ROOT .. "/examples/tools", H.ROOT .. "/tests/fixtures/tools" } } })
    H.wait_for(function() return (H.read(srv.log) or ""):find("http: MCP on", 1, true) ~= nil end, 10, "http listener")
    base = "http://127.0.0.1:" .. port
    tok_a = srv.agent("acme", "alpha", "caioo", "Examples,Tests")
    tok_b = srv.agent("acme", "beta", "caioo", "Examples")
  end)

  teardown(function()
    srv.stop()
    up.stop()
  end)

  local n = 0
  local function post(token, msg, headers)
    local h = { ["Content-Type"] = "application/json", Accept = "application/json, text/event-stream" }
    if token then h.Authorization = "Bearer " .. token end
    for k, v in pairs(headers or {}) do h[k] = v end
    local res = assert(http.request{ method = "POST", url = base .. "/mcp", headers = h,
      body = type(msg) == "string" and msg or json.encode(msg) })
    return res, res.body ~= "" and (res.headers["content-type"] or ""):find("json") and json.decode(res.body) or nil
  end

  local function rpc(token, method, params, headers)
    n = n + 1
    return post(token, { jsonrpc = "2.0", id = n, method = method, params = params or {} }, headers)
  end

  -- The JSON-RPC messages of an event-stream body.
  local function events(body)
    local out = {}
    for data in body:gmatch("data: ([^\n]*)\n") do out[#out + 1] = json.decode(data) end
    return out
  end

  local function open_session(token, version)
    local res, m = rpc(token, "initialize", { protocolVersion = version or "2025-11-25", capabilities = {},
      clientInfo = { name = "spec", version = "1" } })
    assert.equal(200, res.status, res.body)
    local sid = res.headers["mcp-session-id"]
    assert.matches("^%x+$", sid)
    post(token, { jsonrpc = "2.0", method = "notifications/initialized" }, { ["Mcp-Session-Id"] = sid })
    return sid, m
  end

  local function sess(sid, version)
    return { ["Mcp-Session-Id"] = sid, ["MCP-Protocol-Version"] = version or "2025-11-25" }
  end

  it("initializes, lists and calls tools in a session; progress comes before the result on the event stream", function()
    H.async(function()
      local sid, init = open_session(tok_a)
      assert.equal("2025-11-25", init.result.protocolVersion)
      assert.is_true(init.result.capabilities.tools.listChanged)
      local res, m = rpc(tok_a, "tools/list", {}, sess(sid))
      assert.equal(200, res.status)
      local names = {}
      for _, t in ipairs(m.result.tools) do names[t.name] = true end
      assert.is_true(names.example_fetch and names.test_progress)

      res = rpc(tok_a, "tools/call", { name = "test_progress", arguments = {}, _meta = { progressToken = 7 } }, sess(sid))
      assert.equal(200, res.status)
      assert.equal("text/event-stream", res.headers["content-type"])
      local ev = events(res.body)
      local progress = {}
      for i, e in ipairs(ev) do
        if e.method == "notifications/progress" then
          assert.equal(7, e.params.progressToken)
          progress[#progress + 1] = e.params.progress
        else
          assert.equal(#ev, i, "the result comes last")
          assert.equal("done", e.result.content[1].text)
        end
      end
      assert.same({ 0, 50, 100 }, progress)

      -- without Accept: text/event-stream the answer is plain JSON
      res, m = rpc(tok_a, "tools/call", { name = "example_fetch", arguments = { path = "/hello" } },
        { ["Mcp-Session-Id"] = sid, Accept = "application/json" })
      assert.equal(200, res.status)
      assert.is_table(m.result)
      assert.falsy(m.result.isError, res.body)
    end)
  end)

  it("refuses requests without a valid bearer token (401) and another agent's session (403)", function()
    H.async(function()
      local res = rpc(nil, "initialize", { protocolVersion = "2025-11-25", capabilities = {} })
      assert.equal(401, res.status)
      assert.matches("^Bearer ", res.headers["www-authenticate"])
      res = rpc("sbt_not-a-real-token-at-all-000000", "initialize", { protocolVersion = "2025-11-25" })
      assert.equal(401, res.status)
      local sid = open_session(tok_a)
      res = rpc(tok_b, "tools/list", {}, sess(sid))
      assert.equal(403, res.status)
      res = rpc(tok_a, "tools/list", {}, sess("00112233445566778899aabbccddeeff"))
      assert.equal(404, res.status)
      res = rpc(tok_a, "tools/list", {})
      assert.equal(400, res.status)
      res = rpc(tok_a, "tools/list", {}, sess(sid, "1999-01-01"))
      assert.equal(400, res.status)
      local m = json.decode(res.body)
      assert.equal(-32022, m.error.code)
      assert.same({ "2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05" }, m.error.data.supported)
      -- DELETE ends the session
      res = assert(http.request{ method = "DELETE", url = base .. "/mcp",
        headers = { Authorization = "Bearer " .. tok_a, ["Mcp-Session-Id"] = sid } })
      assert.equal(200, res.status)
      res = rpc(tok_a, "tools/list", {}, sess(sid))
      assert.equal(404, res.status)
    end)
  end)

  it("checks Host and Origin (DNS rebinding): 403 for others", function()
    H.async(function()
      local res = rpc(tok_a, "initialize", { protocolVersion = "2025-11-25" }, { Host = "evil.example.com" })
      assert.equal(403, res.status)
      res = rpc(tok_a, "initialize", { protocolVersion = "2025-11-25" }, { Origin = "http://evil.example.com" })
      assert.equal(403, res.status)
      res = rpc(tok_a, "initialize", { protocolVersion = "2025-11-25" }, { Origin = "http://localhost:6274" })
      assert.equal(200, res.status)
      res = rpc(tok_a, "initialize", { protocolVersion = "2025-11-25" }, { Origin = "https://app.example.com" })
      assert.equal(200, res.status)
      res = rpc(tok_a, "initialize", { protocolVersion = "2025-11-25" }, { Host = "localhost:1234" })
      assert.equal(200, res.status)
    end)
  end)

  it("two HTTP clients with two tokens are two agents in the audit trail; a revoked token is refused at once", function()
    H.async(function()
      local sa, sb = open_session(tok_a), open_session(tok_b)
      local ra = rpc(tok_a, "tools/call", { name = "example_clock", arguments = {} }, sess(sa))
      local rb = rpc(tok_b, "tools/call", { name = "example_clock", arguments = {} }, sess(sb))
      assert.is_table(events(ra.body)[1].result)
      assert.is_table(events(rb.body)[1].result)
      local rows = H.sql(srv, "SELECT a.name FROM audit_log l JOIN agents a ON a.id = l.agent_id"
        .. " WHERE l.tool = 'example_clock' ORDER BY l.id")
      assert.matches("alpha", rows)
      assert.matches("beta", rows)

      local _, code = srv.admin("agent revoke beta --tenant acme")
      assert.equal(0, code)
      local res = rpc(tok_b, "tools/list", {}, sess(sb))
      assert.equal(401, res.status)
      res = rpc(tok_b, "initialize", { protocolVersion = "2025-11-25" })
      assert.equal(401, res.status)
      -- the other agent goes on
      res = rpc(tok_a, "tools/list", {}, sess(sa))
      assert.equal(200, res.status)
    end)
  end)

  it("speaks 2026-07-28: server/discover and stateless requests with their _meta and routing headers", function()
    H.async(function()
      local meta = { ["io.modelcontextprotocol/protocolVersion"] = "2026-07-28",
                     ["io.modelcontextprotocol/clientCapabilities"] = {} }
      local hdr = { ["MCP-Protocol-Version"] = "2026-07-28", ["Mcp-Method"] = "server/discover" }
      local res, m = rpc(tok_a, "server/discover", { _meta = meta }, hdr)
      assert.equal(200, res.status, res.body)
      assert.same({ "2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05" }, m.result.supportedVersions)
      assert.is_true(m.result.capabilities.tools.listChanged)
      assert.equal("complete", m.result.resultType)
      assert.is_nil(res.headers["mcp-session-id"])

      hdr["Mcp-Method"] = "tools/list"
      res, m = rpc(tok_a, "tools/list", { _meta = meta }, hdr)
      assert.equal(200, res.status, res.body)
      assert.equal("complete", m.result.resultType)
      assert.is_true(#m.result.tools >= 2)

      hdr["Mcp-Method"] = "tools/call"
      hdr["Mcp-Name"] = "example_clock"
      res, m = rpc(tok_a, "tools/call", { name = "example_clock", arguments = {}, _meta = meta }, hdr)
      assert.equal(200, res.status, res.body)
      local ev = m and { m } or events(res.body)
      assert.equal("complete", ev[#ev].result.resultType)
      assert.falsy(ev[#ev].result.isError)

      -- the routing headers must match the body
      res = rpc(tok_a, "tools/call", { name = "example_clock", arguments = {}, _meta = meta },
        { ["MCP-Protocol-Version"] = "2026-07-28", ["Mcp-Method"] = "tools/list" })
      assert.equal(400, res.status)
      res = rpc(tok_a, "tools/call", { name = "example_clock", arguments = {}, _meta = meta },
        { ["MCP-Protocol-Version"] = "2026-07-28", ["Mcp-Method"] = "tools/call" })
      assert.equal(400, res.status)
      -- an unknown version in _meta gets the versions offered
      local bad = { ["io.modelcontextprotocol/protocolVersion"] = "2027-01-01" }
      res, m = rpc(tok_a, "tools/list", { _meta = bad }, { ["Mcp-Method"] = "tools/list" })
      assert.equal(200, res.status)
      assert.equal(-32022, m.error.code)
      assert.equal("2027-01-01", m.error.data.requested)
      assert.equal("2026-07-28", m.error.data.supported[1])
      -- and no token, no answer
      res = rpc(nil, "server/discover", { _meta = meta }, { ["Mcp-Method"] = "server/discover" })
      assert.equal(401, res.status)
    end)
  end)

  it("sends tools/list_changed on the session's GET stream when the agent's tools change", function()
    H.async(function()
      local sid = open_session(tok_a)
      local out = srv.dir .. "/get-stream.txt"
      os.execute(("curl -sN --max-time 8 -H 'Accept: text/event-stream' -H %s -H %s %s/mcp > %s 2>&1 &"):format(
        H.q("Authorization: Bearer " .. tok_a), H.q("Mcp-Session-Id: " .. sid), base, H.q(out)))
      loop.sleep(0.5)
      local _, code = srv.admin("agent groups alpha --tenant acme -Tests")
      assert.equal(0, code)
      H.wait_for(function() return (H.read(out) or ""):find("list_changed", 1, true) ~= nil end,
        8, "list_changed on the GET stream: " .. tostring(H.read(out)))
      local ev = events(H.read(out))
      assert.equal("notifications/tools/list_changed", ev[1].method)
      srv.admin("agent groups alpha --tenant acme +Tests")
    end)
  end)

  it("keeps a 2026-07-28 subscriptions/listen stream open and sends list changes on it", function()
    H.async(function()
      local out = srv.dir .. "/listen-stream.txt"
      local body = json.encode({ jsonrpc = "2.0", id = "sub-1", method = "subscriptions/listen", params = { _meta = {
        ["io.modelcontextprotocol/protocolVersion"] = "2026-07-28",
        ["io.modelcontextprotocol/clientCapabilities"] = {} } } })
      H.write(srv.dir .. "/listen.json", body)
      os.execute(("curl -sN --max-time 8 -H 'Accept: application/json, text/event-stream' -H 'Content-Type: application/json'"
        .. " -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: subscriptions/listen' -H %s"
        .. " --data-binary @%s %s/mcp > %s 2>&1 &")
        :format(H.q("Authorization: Bearer " .. tok_a), H.q(srv.dir .. "/listen.json"), base, H.q(out)))
      loop.sleep(0.5)
      local _, code = srv.admin("agent groups alpha --tenant acme -Tests")
      assert.equal(0, code)
      H.wait_for(function() return (H.read(out) or ""):find("list_changed", 1, true) ~= nil end,
        8, "list_changed on the listen stream: " .. tostring(H.read(out)))
      local ev = events(H.read(out))
      assert.equal("notifications/subscriptions/acknowledged", ev[1].method)
      assert.equal("notifications/tools/list_changed", ev[2].method)
      assert.equal("sub-1", ev[2].params._meta["io.modelcontextprotocol/subscriptionId"])
      srv.admin("agent groups alpha --tenant acme +Tests")
    end)
  end)

  it("answers /healthz and /metrics (Prometheus text) on loopback", function()
    H.async(function()
      local res = assert(http.request{ url = base .. "/healthz" })
      assert.equal(200, res.status)
      assert.equal("ok\n", res.body)
      res = assert(http.request{ url = base .. "/metrics" })
      assert.equal(200, res.status)
      assert.matches("^text/plain; version=0.0.4", res.headers["content-type"])
      assert.matches('switchboard_calls_total{tool="example_clock",decision="allow",outcome="ok"} %d+', res.body)
      assert.matches('switchboard_call_duration_seconds_bucket{le="%+Inf"} %d+', res.body)
      assert.matches("switchboard_twilio_retries_total %d+", res.body)
      assert.matches("switchboard_escalations_open %d+", res.body)
      assert.matches('switchboard_sends{status="sent"} %d+', res.body)
      assert.matches('switchboard_connections{transport="http"} %d+', res.body)
      -- a request a proxy on this host relays (the public Host, or a
      -- forwarding header) is not a loopback client
      for _, h in ipairs({ { ["X-Forwarded-For"] = "203.0.113.9" }, { Forwarded = "for=203.0.113.9" },
                           { Host = "mcp.example.com" } }) do
        res = assert(http.request{ url = base .. "/metrics", headers = h })
        assert.equal(403, res.status, json.encode(h))
      end
      res = assert(http.request{ url = base .. "/nowhere" })
      assert.equal(404, res.status)
    end)
  end)
end)

describe("MCP 2026-07-28 on the agent socket", function()
  local srv, token
  setup(function()
    srv = H.server({ config = { tool_dirs = { H.ROOT .. "/examples/tools", H.ROOT .. "/tests/fixtures/tools" } } })
    token = srv.agent("acme", "bot", "caioo", "Examples")
  end)
  teardown(function() srv.stop() end)

  it("answers server/discover and stateless requests carrying the token in _meta, without initialize", function()
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      local meta = { ["io.modelcontextprotocol/protocolVersion"] = "2026-07-28",
                     ["io.modelcontextprotocol/clientCapabilities"] = {} }
      local r = c:request("server/discover", { _meta = meta })
      assert.equal("2026-07-28", r.result.supportedVersions[1])
      assert.equal("complete", r.result.resultType)
      r = c:request("tools/list", { _meta = meta })
      assert.equal(-32010, r.error.code)
      meta["io.switchboard/token"] = token
      r = c:request("tools/list", { _meta = meta })
      assert.equal("complete", r.result.resultType)
      assert.is_true(#r.result.tools >= 2)
      r = c:request("tools/call", { name = "example_clock", arguments = {}, _meta = meta })
      assert.falsy(r.result.isError)
      assert.equal("complete", r.result.resultType)
      r = c:request("tools/list", { _meta = { ["io.modelcontextprotocol/protocolVersion"] = "2030-01-01" } })
      assert.equal(-32022, r.error.code)
      assert.equal("2026-07-28", r.error.data.supported[1])
      -- subscriptions/listen: list changes tagged with the request's id
      c:send({ jsonrpc = "2.0", id = 900, method = "subscriptions/listen", params = { _meta = meta } })
      assert.equal("notifications/subscriptions/acknowledged", c:recv(5).method)
      srv.admin("agent groups bot --tenant acme +Tests")
      local note = c:recv(5)
      assert.equal("notifications/tools/list_changed", note.method)
      assert.equal(900, note.params._meta["io.modelcontextprotocol/subscriptionId"])
      -- cancelling the subscription (no initialize on this connection) ends it
      c:send({ jsonrpc = "2.0", method = "notifications/cancelled", params = { requestId = 900 } })
      r = c:request("ping", {})
      assert.same({}, r.result)
      srv.admin("agent groups bot --tenant acme -Tests")
      local none, why = c:recv(1)
      assert.is_nil(none, "a cancelled subscription still notified")
      assert.equal("timeout", why)
      -- 2025 sessions are unchanged: subscriptions/listen is not a 2025 method
      local c2 = assert(H.client(srv.agent_socket))
      c2:initialize(token, "2025-11-25")
      r = c2:request("subscriptions/listen", {})
      assert.equal(-32601, r.error.code)
      c2:close()
      c:close()
    end)
  end)
end)

describe("/metrics behind http.metrics_token", function()
  it("answers only with the token", function()
    local port = free_port()
    local srv = H.server({ config = { http = { listen = "127.0.0.1:" .. port, metrics_token = "m3trics-secret-token" } } })
    H.wait_for(function() return (H.read(srv.log) or ""):find("http: MCP on", 1, true) ~= nil end, 10, "http")
    H.async(function()
      local url = ("http://127.0.0.1:%d/metrics"):format(port)
      local res = assert(http.request{ url = url })
      assert.equal(401, res.status)
      res = assert(http.request{ url = url, headers = { Authorization = "Bearer wrong" } })
      assert.equal(401, res.status)
      res = assert(http.request{ url = url, headers = { Authorization = "Bearer m3trics-secret-token" } })
      assert.equal(200, res.status)
      assert.matches("switchboard_calls_in_flight 0", res.body)
      -- /healthz needs nothing and says nothing
      res = assert(http.request{ url = ("http://127.0.0.1:%d/healthz"):format(port) })
      assert.equal("ok\n", res.body)
    end)
    assert.is_nil((H.read(srv.log) or ""):find("m3trics-secret-token", 1, true))
    srv.stop()
  end)
end)

describe("http_server.start", function()
  it("refuses a non-loopback bind without TLS or behind_tls_proxy", function()
    local hs = require("switchboard.http_server")
    local h, err = hs.start({ cfg = { http = { listen = "0.0.0.0:1", allowed_hosts = {} }, limits = {} } })
    assert.is_nil(h)
    assert.matches("not a loopback address", err)
    h, err = hs.start({ cfg = { http = { listen = "nonsense", allowed_hosts = {} }, limits = {} } })
    assert.is_nil(h)
    assert.matches("HOST:PORT", err)
    assert.is_true(hs.is_loopback("127.0.0.1"))
    assert.is_true(hs.is_loopback("::1"))
    assert.is_false(hs.is_loopback("192.168.1.10"))
  end)
end)
