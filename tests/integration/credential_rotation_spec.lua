-- Cached credentials and key rotation, against the Twilio simulator over
-- real HTTP: after `twilio update` with a new key, the very next call uses
-- the new key (the simulator records which key signed each request),
-- also when the old key is revoked at once.
local H = require("helpers")
local TW = require("twilio_env")

local MAIN_SK = TW.SIM.MAIN[1]
local STD_SK, STD_SECRET = TW.SIM.STANDARD[1], TW.SIM.STANDARD[2]

describe("twilio credential rotation", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server({ config = { twilio = { credential_seconds = 3600 } } })
    token = TW.connect_sim(srv, sim, "rotate")
  end)
  teardown(function()
    srv.stop()
    sim.stop()
  end)

  -- the key SID of the last request the simulator answered on Messages.json
  local function last_key()
    return H.async(function()
      local _, body = sim.control("GET", "requests")
      for i = #body.requests, 1, -1 do
        local r = body.requests[i]
        if r.path:find("/Messages.json", 1, true) then return r.auth end
      end
    end)
  end

  local function search()
    return TW.with(srv, token, function(c)
      return TW.call(c, "twilio_search_messages", { action = "search", limit = 5 })
    end)
  end

  it("uses the new key on the first call after an update, the old one revoked", function()
    for _ = 1, 2 do
      local r = search()
      assert.is_nil(r.isError, r.text)
      assert.equal(MAIN_SK, last_key())
    end
    local u, code, err = srv.admin(("twilio update --tenant rotate --api-key-sid %s"):format(STD_SK), STD_SECRET)
    assert.equal(0, code, err)
    assert.equal(STD_SK, u.api_key_sid)
    H.async(function() assert.equal(200, (sim.control("POST", "keys/" .. MAIN_SK .. "/revoke"))) end)
    local r = search()
    assert.is_nil(r.isError, r.text)
    assert.equal(STD_SK, last_key())
  end)

  it("opens nothing for a disconnected tenant", function()
    local r = srv.admin("twilio disconnect --tenant rotate")
    assert.is_true(r.disconnected)
    local res = TW.with(srv, token, function(c)
      return c:request("tools/call", { name = "twilio_search_messages", arguments = { action = "search" } })
    end)
    -- the tool is gone with the connection; no request reached the simulator
    assert.truthy(res.error or (res.result and res.result.isError))
    assert.equal(STD_SK, last_key())
  end)
end)
