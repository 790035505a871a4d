-- The tenant feature custom.twilio entitles a tenant's agents to the
-- Twilio tools at every moment, not only at connect: removing it hides the
-- tools at once (notifications/tools/list_changed) and refuses calls;
-- adding it back shows them again.
local H = require("helpers")
local TW = require("twilio_env")

describe("tenant entitlement", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "clinic")
  end)
  teardown(function()
    srv.stop()
    sim.stop()
  end)

  local function tool_count(c)
    return #c:request("tools/list", {}).result.tools
  end

  -- the next notification of this method, skipping others
  local function next_note(c, method)
    while true do
      local m = assert(c:recv(5), "no " .. method)
      if m.method == method then return m end
    end
  end

  it("follows tenant features while agents are connected", function()
    H.async(function()
      local c = TW.session(srv, token)
      assert.equal(7, tool_count(c))
      local r, code = srv.admin("tenant features clinic -custom.twilio")
      assert.equal(0, code, tostring(r))
      next_note(c, "notifications/tools/list_changed")
      assert.equal(0, tool_count(c))
      local call = c:call("twilio_account_overview", { action = "account_info" })
      assert.equal(-32602, call.error.code)
      -- a new session of the tenant sees nothing either
      local d = TW.session(srv, token)
      assert.equal(0, tool_count(d))
      d:close()

      r, code = srv.admin("tenant features clinic +custom.twilio")
      assert.equal(0, code, tostring(r))
      next_note(c, "notifications/tools/list_changed")
      assert.equal(7, tool_count(c))
      call = c:call("twilio_account_overview", { action = "account_info" })
      assert.is_table(call.result)
      assert.is_nil(call.result.isError)
      c:close()
    end, 40)
  end)
end)
