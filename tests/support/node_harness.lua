-- Starts a server with the example tools and a local upstream, creates a
-- tenant and an agent, and a second tenant connected to the Twilio
-- simulator with an agent holding the Twilio tools, then runs the official
-- MCP SDK client tests (tests/node) against `switchboard connect`. Prints
-- node's TAP output.
package.path = (os.getenv("SB_ROOT") or ".") .. "/tests/?.lua;" .. package.path
local H = require("helpers")
local TW = require("twilio_env")

local up = H.upstream()
local sim = TW.sim()
local srv = TW.server({ config = { tool_settings = { example_fetch = { base_url = up.url } } } })
local token = srv.agent("nodetest", "sdk", "caioo", "Examples")
local twilio_token = TW.connect_sim(srv, sim, "nodetwilio")
local cmd = ("cd %s/tests/node && SB_BIN=%s SB_SOCKET=%s SWITCHBOARD_TOKEN=%s SB_TWILIO_TOKEN=%s"
  .. " node --test --test-reporter=tap 2>&1")
  :format(H.q(H.ROOT), H.q(H.BIN), H.q(srv.agent_socket), H.q(token), H.q(twilio_token))
local out, code = H.sh(cmd)
io.stdout:write(out)
srv.stop()
sim.stop()
up.stop()
return code == 0 and 0 or 1
