-- The call path keeps each tenant's connection (row, policy view, the
-- countries of its numbers) in memory: every admin change that touches it
-- is seen by the very next call, in the same agent session.
local H = require("helpers")
local TW = require("twilio_env")

local ANA = TW.SIM.ANA

describe("the cached connection", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "cache")
  end)
  teardown(function()
    if srv then srv.stop() end
    if sim then sim.stop() end
  end)

  local function posts_since(n)
    return H.async(function()
      local k = 0
      for _, r in ipairs(sim.requests(n)) do if r.method == "POST" then k = k + 1 end end
      return k
    end)
  end

  it("follows autonomous-sends off and on, and a disconnect, on the next call", function()
    local before = H.async(function() return sim.last() end)
    local res = TW.with(srv, token, function(c)
      local out = {}
      out.sent = TW.call(c, "twilio_send_sms", { to = ANA, body = "Cached 1" })
      local _, code, err = srv.admin("twilio autonomous-sends off --tenant cache")
      assert(code == 0, err)
      out.held = TW.call(c, "twilio_send_sms", { to = ANA, body = "Cached 2" })
      _, code, err = srv.admin("twilio autonomous-sends on --tenant cache --confirm")
      assert(code == 0, err)
      out.again = TW.call(c, "twilio_send_sms", { to = ANA, body = "Cached 3" })
      _, code, err = srv.admin("twilio disconnect --tenant cache")
      assert(code == 0, err)
      -- the tool is gone, or refused for want of a connection: never served
      out.gone = c:request("tools/call", { name = "twilio_account_overview", arguments = { action = "account_info" } })
      return out
    end)
    assert.is_nil(res.sent.isError, res.sent.text)
    assert.is_true(res.held.isError)
    assert.truthy(res.held.data and res.held.data.escalation_id, res.held.text)
    assert.truthy(res.held.text:find("autonomous sends are disabled", 1, true), res.held.text)
    assert.is_nil(res.again.isError, res.again.text)
    assert.truthy(res.gone.error or (res.gone.result and res.gone.result.isError), require("switchboard.json").encode(res.gone))
    -- two messages went out: the first and the third
    assert.equal(2, posts_since(before))
  end)
end)
