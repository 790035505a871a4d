-- The email package through the official MCP SDK client (tests/node/
-- email_sdk.mjs): this spec starts the package's simulator and a server,
-- connects a tenant, runs the node test, then looks for the key in the
-- server's log and database. Skipped with SB_SKIP_NODE, as run.sh skips
-- the other node tests.
local H = require("helpers")
local E = dofile((os.getenv("SB_ROOT") or ".") .. "/examples/integrations/email/tests/env.lua")

local it_node = os.getenv("SB_SKIP_NODE") and pending or it

describe("the email package through the MCP SDK client", function()
  it_node("connects, lists, reads, escalates and sends once, holds PII, and never shows the key", function()
    local sim = E.sim()
    local srv = E.server()
    local ok, err = pcall(function()
      local token = E.connect(srv, sim, "sdkmail")
      local node_dir = os.getenv("SB_NODE_DIR") or (H.ROOT .. "/tests/node")
      local out, code = H.sh(("cd %s && SB_BIN=%s SB_SOCKET=%s SB_CONFIG=%s SB_EMAIL_TOKEN=%s SB_EMAIL_TENANT=sdkmail"
        .. " SB_EMAIL_SIM=%s SB_EMAIL_SECRET=%s node --test --test-reporter=tap email_sdk.mjs 2>&1")
        :format(H.q(node_dir), H.q(H.BIN), H.q(srv.agent_socket), H.q(srv.conf), H.q(token), H.q(sim.url),
          H.q(E.KEY_SECRET)))
      assert.equal(0, code, out)
      assert.truthy(out:find("\nok 1 - email package through the MCP SDK client", 1, true), out)
      -- the audit record of the approved send
      local rows = H.sh(("sqlite3 %s %s"):format(H.q(srv.dir .. "/data/switchboard.db"),
        H.q("SELECT decision || ' ' || outcome FROM audit_log WHERE tool = 'email_send' ORDER BY id")))
      assert.truthy(rows:find("escalate escalated", 1, true), rows)
      assert.truthy(rows:find("approved sent", 1, true) or rows:find("allow sent", 1, true), rows)
      assert.truthy(rows:find("hold held", 1, true), rows)
    end)
    srv.stop()
    sim.stop()
    if not ok then error(err, 0) end
    assert.is_nil(E.leaked(srv, E.KEY_SECRET))
    assert.is_nil(E.leaked(srv, E.KEY))
  end)
end)
