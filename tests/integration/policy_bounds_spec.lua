-- Policies against a real server process: a pathological pattern in an
-- operator policy cannot hold the event loop, and the Safety Gateway
-- refuses a secret given with its context before it reaches Twilio.
local H = require("helpers")
local TW = require("twilio_env")
local loop = require("core.loop")

describe("a pathological pattern in a policy", function()
  local srv, up, token
  setup(function()
    up = H.upstream()
    local pdir = H.tmpdir("pol")
    H.write(pdir .. "/10_paths.lua", H.read(H.ROOT .. "/examples/policies/quiet_paths.lua"))
    H.write(pdir .. "/20_slow.lua", [[
      return { name = "slow_pattern", priority = 20, tools = { "example_fetch" },
               check = function(call)
                 if call.args.path:find("^/slow") and call.args.path:find(".-.-.-.-b") then
                   return deny("matched")
                 end
                 return allow()
               end }
    ]])
    srv = H.server({ config = { policy_dir = pdir, tool_settings = { example_fetch = { base_url = up.url } } } })
    token = srv.agent("acme", "alice", "caioo", "Examples")
  end)
  teardown(function() srv.stop(2) up.stop() end)

  it("is stopped by the budget while other connections are served, and the call is refused", function()
    H.async(function()
      local a = assert(H.client(srv.agent_socket))
      local b = assert(H.client(srv.agent_socket))
      assert.is_table(a:initialize(token).result)
      assert.is_table(b:initialize(token).result)
      -- a long argument the pattern backtracks over for hours
      a:send({ id = 99, method = "tools/call",
               params = { name = "example_fetch", arguments = { path = "/slow/" .. ("a"):rep(500) } } })
      loop.sleep(0.2)
      local t0 = loop.time()
      local pong, err = b:request("ping", {}, 1)
      assert.is_table(pong, "no answer to a ping within 1 s: " .. tostring(err))
      assert.truthy(loop.time() - t0 < 1)
      local r = assert(a:wait(99, 5))
      assert.is_true(r.result.isError)
      assert.truthy(r.result.content[1].text:find("a safety policy failed", 1, true), r.result.content[1].text)
      -- ordinary patterns in the same policies keep working
      r = a:call("example_fetch", { path = "/private/x" })
      assert.truthy(r.result.content[1].text:find("Refused by policy quiet_paths", 1, true))
      r = a:call("example_fetch", { path = "/hello.json" })
      assert.equal(200, r.result.structuredContent.status)
      a:close()
      b:close()
    end)
    local log = H.read(srv.log)
    assert.truthy(log:find("policy slow_pattern failed", 1, true), log)
    assert.truthy(log:find("matching steps", 1, true), log)
    assert.is_true(srv.alive())
  end)
end)

describe("the Safety Gateway and a secret named by its context", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "ctx")
  end)
  teardown(function() srv.stop() sim.stop() end)

  local function send(body)
    return H.async(function()
      local c = TW.session(srv, token)
      local before = sim.last()
      local r = TW.call(c, "twilio_send_sms", { to = TW.SIM.OTHER, body = body })
      local n = 0
      for _, q in ipairs(sim.requests(before)) do if q.method == "POST" then n = n + 1 end end
      r.posts = n
      c:close()
      return r
    end)
  end

  it("refuses it before Twilio, without echoing it", function()
    local r = send("the API key secret is Zk8qP2vR7xL4mN9tB3wY6cD1fH5jK0sA")
    assert.is_true(r.isError)
    assert.equal(0, r.posts)
    assert.truthy(r.text:find("Refused by policy safety_gateway", 1, true), r.text)
    assert.truthy(r.text:find("secret", 1, true), r.text)
    assert.falsy(r.text:find("Zk8qP2vR7x", 1, true), r.text)
  end)

  it("lets ordinary words about passwords and tokens through", function()
    local r = send("My password is in the drawer; a small token of appreciation is on your desk.")
    assert.is_nil(r.isError, r.text)
    assert.equal(1, r.posts)
  end)
end)
