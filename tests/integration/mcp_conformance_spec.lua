-- The official MCP conformance suite (@modelcontextprotocol/conformance
-- 0.1.13, installed into tests/node by npm ci) against the HTTP endpoint
-- of a real server, with the fixture tools of tests/fixtures/conformance.
-- The suite cannot send an Authorization header, so a test-only proxy
-- (tests/node/bearer_proxy.mjs) adds the agent's token and passes the rest
-- through as sent (Host and Origin included, for the DNS-rebinding checks).
-- Every scenario must pass except those in tests/node/conformance-baseline.yml
-- (what this server does not claim, each with its reason).
local H = require("helpers")
local httpd = require("core.httpd")

local function free_port()
  local s = assert(httpd.listen{ port = 0, handler = function() return 200, {}, "" end })
  local p = s:port()
  s:close()
  return p
end

describe("MCP conformance suite (HTTP)", function()
  local bin = os.getenv("SB_CONFORMANCE_BIN") or (H.ROOT .. "/tests/node/node_modules/.bin/conformance")
  local srv, dir, proxy_pid

  setup(function()
    assert(H.exists(bin), ("the conformance suite is not installed at %s: run `make deps` (npm ci in tests/node)")
      :format(bin))
    local port = free_port()
    srv = H.server({ config = { http = { listen = "127.0.0.1:" .. port },
                                tool_dirs = { H.ROOT .. "/tests/fixtures/conformance" } } })
    H.wait_for(function() return (H.read(srv.log) or ""):find("http: MCP on", 1, true) ~= nil end, 10, "http")
    local token = srv.agent("conformance", "suite", "caioo", "Conformance")
    dir = H.tmpdir("conformance")
    srv.port, srv.proxy_port = port, free_port()
    H.sh(("cd %s/tests/node && SWITCHBOARD_TOKEN=%s node bearer_proxy.mjs %d %d > %s/proxy.log 2>&1 &"
      .. " echo $! > %s/proxy.pid"):format(H.q(H.ROOT), H.q(token), srv.proxy_port, port, H.q(dir), H.q(dir)))
    H.wait_for(function() return (H.read(dir .. "/proxy.log") or ""):find("listening", 1, true) ~= nil end, 15,
      "the bearer proxy")
    proxy_pid = tonumber((H.read(dir .. "/proxy.pid") or ""):match("%d+"))
  end)

  teardown(function()
    if proxy_pid then os.execute("kill " .. proxy_pid .. " 2>/dev/null") end
    if srv then srv.stop() end
  end)

  it("passes every scenario but the baseline's (tools, ping, lifecycle, SSE streams, DNS rebinding)", function()
    local out, code = H.sh(("cd %s && timeout 600 %s server --url http://127.0.0.1:%d/mcp --expected-failures %s 2>&1")
      :format(H.q(dir), H.q(bin), srv.proxy_port, H.q(H.ROOT .. "/tests/node/conformance-baseline.yml")))
    assert.equal(0, code, out)
    assert.matches("Baseline check passed", out)
    for _, s in ipairs({ "server-initialize", "ping", "tools-list", "tools-call-simple-text", "tools-call-error",
                         "tools-call-with-progress", "server-sse-multiple-streams", "dns-rebinding-protection" }) do
      assert.matches("✓ " .. s:gsub("%-", "%%-") .. ":", out)
    end
  end)
end)
