-- The operator console in a real headless Chromium (Debian's chromium,
-- driven by puppeteer-core: tests/node/console.test.mjs) against the
-- runtime and the Twilio simulator over real HTTP. The runtime gets a
-- tenant with no connection (acme: the browser connects it) and another
-- one (other) with an agent, whose token must not log in; the browser
-- logs in with links printed by `switchboard admin console-link`.
-- Screenshots go to build/artifacts/console/.
local H = require("helpers")
local TW = require("twilio_env")

local CHROMIUM = os.getenv("SB_CHROMIUM") or "/usr/bin/chromium"

describe("the operator console", function()
  local sim, srv, port

  setup(function()
    sim = TW.sim()
    port = TW.free_ports(1)[1]
    -- the connect form has no hosts field: the server's Twilio is the simulator
    srv = TW.server({ config = { console = { listen = "127.0.0.1:" .. port, page_size = 3 },
      twilio = { hosts = { api = sim.url, lookups = sim.url, verify = sim.url, content = sim.url } } } })
  end)
  teardown(function()
    if srv then srv.stop() end
    if sim then sim.stop() end
  end)

  it("console-link refuses an unknown tenant and prints a one-time link", function()
    local _, code, err = srv.admin("console-link --tenant nobody")
    assert.equal(1, code)
    assert.truthy(err:find("no tenant named 'nobody'", 1, true), err)
    local r, code2, err2 = srv.admin("console-link")
    assert.equal(0, code2, err2)
    assert.truthy(r.url:match("^http://127%.0%.0%.1:%d+/login%?token=sbl_[%w_-]+$"), r.url)
    assert.equal("operator", r.scope)
  end)

  it("passes the browser tests", function()
    assert.equal(0, (select(2, H.sh("test -x " .. H.q(CHROMIUM)))), CHROMIUM .. " is missing (Debian package chromium)")
    assert.equal(0, (select(2, srv.admin("tenant add acme"))))
    local other = srv.agent("other", "helper", "caioo", "Examples")
    local op = assert(srv.admin("console-link").url)
    local ta = assert(srv.admin("console-link --tenant other").url)
    local artifacts = H.ROOT .. "/build/artifacts/console"
    H.sh("mkdir -p " .. H.q(artifacts))
    local node_dir = os.getenv("SB_NODE_DIR") or (H.ROOT .. "/tests/node")
    local cmd = ("cd %s && SB_CONSOLE_URL=%s SB_CONSOLE_LINK=%s SB_CONSOLE_TENANT_LINK=%s SB_AGENT_TOKEN=%s"
      .. " SB_SIM_URL=%s SB_BIN=%s SB_SOCKET=%s SB_ARTIFACTS=%s SB_CHROMIUM=%s"
      .. " node --test --test-reporter=tap console.test.mjs 2>&1")
      :format(H.q(node_dir), H.q("http://127.0.0.1:" .. port), H.q(op), H.q(ta), H.q(other), H.q(sim.url),
        H.q(H.BIN), H.q(srv.agent_socket), H.q(artifacts), H.q(CHROMIUM))
    local out, code = H.sh(cmd)
    io.stdout:write(out:gsub("\n", "\n# "))
    assert.equal(0, code, out)
    assert.truthy(out:find("\n# pass %d+"), out)
    assert.falsy(out:find("\n# fail [1-9]"), out)
    -- what the pages did is what the CLI sees
    local show = srv.admin("twilio show --tenant acme")
    assert.equal("active", show.status)
    assert.equal(TW.SIM.STANDARD[1], show.api_key_sid)
    assert.is_false(show.autonomous_sends)    -- connected again after the disconnect
    -- the tenant administrator's forms, edited to name acme, changed only their own tenant
    for _, a in ipairs(srv.admin("agent list --tenant acme").agents) do assert.not_equal("intruder", a.name) end
    local found = false
    for _, a in ipairs(srv.admin("agent list --tenant other").agents) do found = found or a.name == "intruder" end
    assert.is_true(found)
    -- every change is audited with the login
    local log = srv.admin("audit settings --tenant acme --limit 200").changes
    local actions = {}
    for _, c in ipairs(log) do
      if c.actor:find("^console: operator") then actions[c.action] = true end
    end
    for _, a in ipairs({ "tenant.features", "twilio.connect", "twilio.update", "twilio.autonomous_sends",
                         "twilio.disconnect", "agent.add", "escalation.approve", "escalation.reject" }) do
      assert.is_true(actions[a], a .. " was not audited with the console's operator")
    end
    for _, f in ipairs({ "login", "tenants", "connection", "numbers", "messages", "escalations", "escalation",
                         "executions", "execution", "agents", "usage", "audit", "tenant-admin" }) do
      assert.is_true(H.exists(artifacts .. "/" .. f .. ".png"), "no screenshot " .. f)
    end
  end)

  it("the usage figures are the CLI's too: twilio usage and sends", function()
    local u, code, err = srv.admin("twilio usage --tenant acme --start " .. os.date("!%Y-%m-%d", os.time() - 29 * 86400))
    assert.equal(0, code, err)
    local cats = {}
    for _, r in ipairs(u.records) do cats[r.category] = r end
    assert.equal(65, cats["sms-outbound"].count)
    for _, bad in ipairs({ "2026-13-01", "2026-02-30", "yesterday" }) do
      local _, bcode, berr = srv.admin("twilio usage --tenant acme --start " .. bad)
      assert.equal(1, bcode)
      assert.truthy(berr:find("twilio usage: 'start' must be a date as YYYY-MM-DD", 1, true), berr)
    end
    local d, dcode, derr = srv.admin("sends --tenant acme")
    assert.equal(0, dcode, derr)
    assert.equal(1, #d.per_day)
    assert.equal(1, d.per_day[1].total)
    assert.equal(1, d.per_day[1].outcomes.sent)
    local _, xcode, xerr = srv.admin("sends --tenant acme --days 91")
    assert.equal(1, xcode)
    assert.truthy(xerr:find("'days' must be a whole number from 1 to 90", 1, true), xerr)
  end)
end)
