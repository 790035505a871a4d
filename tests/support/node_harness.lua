-- Starts a server with the example tools and a local upstream, creates a
-- tenant and an agent, then runs the official MCP SDK client tests
-- (tests/node) against `switchboard connect`. Prints node's TAP output.
package.path = (os.getenv("SB_ROOT") or ".") .. "/tests/?.lua;" .. package.path
local H = require("helpers")

local up = H.upstream()
local srv = H.server({ config = { tool_settings = { example_fetch = { base_url = up.url } } } })
local token = srv.agent("nodetest", "sdk", "caioo", "Examples")
local cmd = ("cd %s/tests/node && SB_BIN=%s SB_SOCKET=%s SWITCHBOARD_TOKEN=%s node --test --test-reporter=tap 2>&1")
  :format(H.q(H.ROOT), H.q(H.BIN), H.q(srv.agent_socket), H.q(token))
local out, code = H.sh(cmd)
io.stdout:write(out)
srv.stop()
up.stop()
return code == 0 and 0 or 1
