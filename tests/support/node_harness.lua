-- Starts a server with the example tools and a local upstream, creates a
-- tenant and an agent, and a second tenant connected to the Twilio
-- simulator with an agent holding the Twilio tools, then runs the official
-- MCP SDK client tests (tests/node) against `switchboard connect` and, over
-- HTTP, against the listener. Prints node's TAP output.
package.path = (os.getenv("SB_ROOT") or ".") .. "/tests/?.lua;" .. package.path
local H = require("helpers")
local TW = require("twilio_env")

-- a loopback port free right now, for the HTTP listener (MCP over HTTP)
local function free_port()
  local s = assert(require("core.httpd").listen{ port = 0, handler = function() return 200, {}, "" end })
  local p = s:port()
  s:close()
  return p
end

local up = H.upstream()
local sim = TW.sim()
local port = free_port()
-- the clients' tests read and then send in one session: the untrusted-
-- content guard flags those sends (its own scenarios run with it holding,
-- tests/node/untrusted.test.mjs)
local srv = TW.server({ config = { tool_settings = { example_fetch = { base_url = up.url } },
                                   policy_settings = { untrusted_content = { action = "flag", mention_action = "flag" } },
                                   http = { listen = "127.0.0.1:" .. port } } })
local token = srv.agent("nodetest", "sdk", "caioo", "Examples")
local twilio_token = TW.connect_sim(srv, sim, "nodetwilio")
H.wait_for(function() return (H.read(srv.log) or ""):find("http: MCP on", 1, true) ~= nil end, 10, "the HTTP listener")
-- SB_NODE_DIR: another copy of tests/node (with its own node_modules);
-- SB_NODE_CMD: another command than the whole node --test run
local node_dir = os.getenv("SB_NODE_DIR") or (H.ROOT .. "/tests/node")
local node_cmd = os.getenv("SB_NODE_CMD") or "node --test --test-reporter=tap"
local cmd = ("cd %s && SB_BIN=%s SB_SOCKET=%s SWITCHBOARD_TOKEN=%s SB_TWILIO_TOKEN=%s SB_HTTP_URL=%s %s 2>&1")
  :format(H.q(node_dir), H.q(H.BIN), H.q(srv.agent_socket), H.q(token), H.q(twilio_token),
    H.q(("http://127.0.0.1:%d/mcp"):format(port)), node_cmd)
local out, code = H.sh(cmd)
io.stdout:write(out)
srv.stop()
sim.stop()
up.stop()
return code == 0 and 0 or 1
