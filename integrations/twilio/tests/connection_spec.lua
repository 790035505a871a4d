-- Connecting a tenant's Twilio account (issue: credentials vault,
-- validation, lifecycle, admin CLI, data preview, tenant isolation),
-- against the Twilio simulator over real HTTP.
local H = require("helpers")
local TW = require("twilio_env")
local json = require("switchboard.json")

local MAIN_SK, MAIN_SECRET = TW.SIM.MAIN[1], TW.SIM.MAIN[2]
local STD_SK, STD_SECRET = TW.SIM.STANDARD[1], TW.SIM.STANDARD[2]

describe("twilio connect", function()
  local sim, srv
  setup(function()
    sim = TW.sim()
    srv = TW.server()
  end)
  teardown(function()
    srv.stop()
    sim.stop()
  end)

  local function connect(tenant, args, secret)
    return srv.admin(("twilio connect --tenant %s %s --hosts %s"):format(tenant, args, sim.url), secret)
  end

  it("needs the tenant feature custom.twilio", function()
    srv.admin("tenant add nofeature")
    local _, code, err = connect("nofeature", ("--account-sid %s --api-key-sid %s"):format(TW.SIM.ACCOUNT, MAIN_SK),
      MAIN_SECRET)
    assert.equal(1, code)
    assert.truthy(err:find("custom.twilio", 1, true))
    assert.truthy(err:find("tenant features nofeature +custom.twilio", 1, true))
  end)

  it("checks prefixes, refuses an Auth Token and an Account SID as the key", function()
    srv.admin("tenant add checks")
    srv.admin("tenant features checks +custom.twilio")
    local cases = {
      { ("--account-sid XX%s --api-key-sid %s"):format(TW.SIM.ACCOUNT:sub(3), MAIN_SK), MAIN_SECRET, "account SID" },
      { ("--account-sid %s --api-key-sid %s"):format(TW.SIM.ACCOUNT, "SK123"), MAIN_SECRET, "API key SID" },
      { ("--account-sid %s --api-key-sid %s"):format(TW.SIM.ACCOUNT, TW.SIM.ACCOUNT), MAIN_SECRET, "Create an API Key" },
      { ("--account-sid %s --api-key-sid %s"):format(TW.SIM.ACCOUNT, MAIN_SK), "0123456789abcdef0123456789abcdef",
        "looks like an Auth Token" },
      { ("--account-sid %s --api-key-sid %s"):format(TW.SIM.ACCOUNT, MAIN_SK), "", "secret" },
      { ("--account-sid %s --api-key-sid %s"):format(TW.SIM.ACCOUNT, MAIN_SK), "wrong-secret-00000000000000000",
        "refused these credentials" },
    }
    for _, c in ipairs(cases) do
      local _, code, err = connect("checks", c[1], c[2])
      assert.equal(1, code, c[3])
      assert.truthy(err:find(c[3], 1, true), ("expected %q in %q"):format(c[3], err))
    end
    local show, scode = srv.admin("twilio show --tenant checks")
    assert.equal(1, scode)
    assert.is_truthy(tostring(show):find("no Twilio connection") or true)
  end)

  it("trims spaces, validates, loads numbers and starts with autonomous sends off", function()
    srv.admin("tenant add spaces")
    srv.admin("tenant features spaces +custom.twilio")
    local r, code, err = connect("spaces", ("--account-sid ' %s ' --api-key-sid '  %s'"):format(TW.SIM.ACCOUNT, MAIN_SK),
      "  " .. MAIN_SECRET .. "  \n")
    assert.equal(0, code, err)
    assert.equal("active", r.status)
    assert.equal("Acme Clinic", r.account_name)
    assert.equal(3, r.number_count)
    assert.equal("+14155550100", r.default_number)
    assert.is_false(r.autonomous_sends)
    local nums = srv.admin("twilio numbers --tenant spaces")
    assert.equal(3, #nums.numbers)
    assert.is_true(nums.numbers[1].sms)
    local text = srv.admin_text("twilio numbers --tenant spaces")
    assert.truthy(text:find("NUMBER%s+NAME%s+VOICE%s+SMS%s+MMS"))
    assert.truthy(text:find("+14155550101", 1, true))
    local again, acode, aerr = connect("spaces", ("--account-sid %s --api-key-sid %s"):format(TW.SIM.ACCOUNT, MAIN_SK),
      MAIN_SECRET)
    assert.equal(1, acode, tostring(again))
    assert.truthy(aerr:find("already has a Twilio connection", 1, true))
  end)

  it("accepts a Standard key refused on the Accounts resource and says the name is not visible", function()
    srv.admin("tenant add standard")
    srv.admin("tenant features standard +custom.twilio")
    local r, code, err = connect("standard", ("--account-sid %s --api-key-sid %s --default-number +14155550101")
      :format(TW.SIM.ACCOUNT, STD_SK), STD_SECRET)
    assert.equal(0, code, err)
    assert.truthy(r.account_name:find("not visible", 1, true))
    assert.equal("+14155550101", r.default_number)
    assert.truthy(r.warnings[1]:find("Standard key", 1, true))
  end)

  it("connects an account with no SMS-capable number and sends then say so", function()
    srv.admin("tenant add voiceonly")
    srv.admin("tenant features voiceonly +custom.twilio")
    local r, code, err = connect("voiceonly", ("--account-sid %s --api-key-sid %s")
      :format(TW.SIM.VOICE_ACCOUNT, TW.SIM.VOICE[1]), TW.SIM.VOICE[2])
    assert.equal(0, code, err)
    assert.is_nil(r.default_number)
    local warned = false
    for _, w in ipairs(r.warnings) do warned = warned or w:find("no SMS-capable number", 1, true) ~= nil end
    assert.is_true(warned)
    local _, dcode, derr = srv.admin("twilio update --tenant voiceonly --default-number +14155550110")
    assert.equal(1, dcode)
    assert.truthy(derr:find("cannot send SMS", 1, true))
    srv.admin("agent add --tenant voiceonly --name v --type caioo --tier owner --groups 'Twilio Communications'")
  end)

  it("refuses bad optional settings naming the field", function()
    srv.admin("tenant add opts")
    srv.admin("tenant features opts +custom.twilio")
    local base = ("--account-sid %s --api-key-sid %s "):format(TW.SIM.ACCOUNT, MAIN_SK)
    local _, code, err = connect("opts", base .. "--whatsapp-number 4155238886", MAIN_SECRET)
    assert.equal(1, code)
    assert.truthy(err:find("WhatsApp number", 1, true))
    _, code, err = connect("opts", base .. "--verify-service-sid VX123", MAIN_SECRET)
    assert.equal(1, code)
    assert.truthy(err:find("Verify service SID", 1, true))
    _, code, err = connect("opts", base .. "--default-number +14155550999", MAIN_SECRET)
    assert.equal(1, code)
    assert.truthy(err:find("not one of this account's phone numbers", 1, true))
  end)
end)

describe("twilio connection lifecycle", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "clinic", nil, { sends = false })
  end)
  teardown(function()
    srv.stop()
    sim.stop()
  end)

  it("shows the connection without the secret", function()
    local r = srv.admin("twilio show --tenant clinic")
    assert.equal("Acme Clinic", r.account_name)
    assert.equal("+14155238886", r.whatsapp_number)
    assert.equal(TW.SIM.VERIFY, r.verify_service_sid)
    assert.equal(3, r.number_count)
    assert.is_string(r.last_tested_at)
    local text = srv.admin_text("twilio show --tenant clinic")
    assert.truthy(text:find("autonomous sends:%s+no"))
    assert.falsy(text:find(MAIN_SECRET, 1, true))
    assert.falsy(json.encode(r):find(MAIN_SECRET, 1, true))
  end)

  it("refuses autonomous sends on without --confirm and audits each change", function()
    local _, code, err = srv.admin("twilio autonomous-sends on --tenant clinic")
    assert.equal(1, code)
    assert.truthy(err:find("--confirm", 1, true))
    assert.truthy(err:find("cost money", 1, true))
    local text = srv.admin_text("twilio autonomous-sends on --tenant clinic --confirm")
    assert.truthy(text:find("WARNING", 1, true))
    local r = srv.admin("twilio autonomous-sends off --tenant clinic")
    assert.is_false(r.autonomous_sends)
    os.execute("sleep 0.1")
    local changes = srv.admin("audit settings --tenant clinic").changes
    local seen = {}
    for _, c in ipairs(changes) do
      if c.action == "twilio.autonomous_sends" then
        seen[#seen + 1] = c
        assert.truthy(c.actor:find("uid", 1, true))
        assert.is_string(c.at)
      end
    end
    assert.equal(2, #seen)
    assert.same({ autonomous_sends = true }, seen[1].old)   -- newest first: on -> off
    assert.same({ autonomous_sends = false }, seen[1].new)
    assert.same({ autonomous_sends = false }, seen[2].old)
  end)

  it("previews messages page by page following Twilio's next-page links", function()
    local p1 = srv.admin("twilio messages --tenant clinic --page 1 --page-size 3")
    assert.equal(3, #p1.messages)
    assert.is_true(p1.more)
    local p2 = srv.admin("twilio messages --tenant clinic --page 2 --page-size 3")
    assert.equal(3, #p2.messages)
    assert.are_not.equal(p1.messages[1].sid, p2.messages[1].sid)
    local text = srv.admin_text("twilio messages --tenant clinic --page-size 3")
    assert.truthy(text:find("TO%s+FROM%s+BODY%s+STATUS%s+TIME"))
    local _, code, err = srv.admin("twilio messages --tenant clinic --page-size 500")
    assert.equal(1, code)
    assert.truthy(err:find("page size", 1, true))
  end)

  it("keeps the connection active when a test meets a Twilio 5xx instead of a refused key", function()
    H.async(function()
      sim.faults({ { match = { method = "GET", path_pattern = "/Accounts/AC%x+%.json$" }, action = "500" } })
    end)
    local r = srv.admin("twilio test --tenant clinic")
    assert.is_false(r.ok)
    assert.equal("active", r.status)
    assert.truthy(r.problem:find("500", 1, true) or r.problem:find("Twilio", 1, true), r.problem)
  end)

  it("marks a revoked key as error, tells agents, and an update restores active", function()
    H.async(function() assert.equal(200, (sim.control("POST", "keys/" .. MAIN_SK .. "/revoke"))) end)
    local r = srv.admin("twilio test --tenant clinic")
    assert.is_false(r.ok)
    assert.equal("error", r.status)
    assert.truthy(r.status_reason:find("20003", 1, true))
    local res = H.async(function()
      local c = TW.session(srv, token)
      local out = TW.call(c, "twilio_account_overview", { action = "account_info" })
      c:close()
      return out
    end)
    assert.is_true(res.isError)
    assert.truthy(res.text:find("needs attention", 1, true))
    -- a failed update leaves the old settings in force
    local _, code, err = srv.admin(("twilio update --tenant clinic --api-key-sid %s"):format(STD_SK), "bad-secret-0000000000000")
    assert.equal(1, code)
    assert.truthy(err:find("previous settings stay in force", 1, true))
    assert.equal(MAIN_SK, srv.admin("twilio show --tenant clinic").api_key_sid)
    local u, ucode, uerr = srv.admin(("twilio update --tenant clinic --api-key-sid %s"):format(STD_SK), STD_SECRET)
    assert.equal(0, ucode, uerr)
    assert.equal("active", u.status)
    assert.equal(STD_SK, u.api_key_sid)
    res = H.async(function()
      local c = TW.session(srv, token)
      local out = TW.call(c, "twilio_account_overview", { action = "list_phone_numbers" })
      c:close()
      return out
    end)
    assert.is_nil(res.isError)
  end)

  it("disconnects while an agent is connected: the tools disappear and history stays", function()
    H.async(function()
      local c = TW.session(srv, token)
      local before = c:request("tools/list", {})
      assert.equal(7, #before.result.tools)
      local r = srv.admin("twilio disconnect --tenant clinic")
      assert.is_true(r.disconnected)
      local m = c:recv(5)
      assert.equal("notifications/tools/list_changed", m.method)
      local after = c:request("tools/list", {})
      assert.equal(0, #after.result.tools)
      local call = c:call("twilio_account_overview", { action = "account_info" })
      assert.equal(-32602, call.error.code)
      c:close()
    end)
    local _, code = srv.admin("twilio show --tenant clinic")
    assert.equal(1, code)
    local rows = TW.audit(srv)
    assert.truthy(#rows >= 2)
    assert.truthy(H.sh(("sqlite3 %s 'SELECT count(*) FROM connections'"):format(srv.dir .. "/data/switchboard.db"))
      :match("^0"))
  end)
end)

describe("twilio secrets and isolation", function()
  local sim, srv, token_a, token_b
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token_a = TW.connect_sim(srv, sim, "tenant-a")
    token_b = TW.connect_sim(srv, sim, "tenant-b", " ",
      { account = TW.SIM.VOICE_ACCOUNT, sim_key = TW.SIM.VOICE })
  end)
  teardown(function()
    srv.stop()
    sim.stop()
  end)

  local function db_bytes()
    return (H.read(srv.dir .. "/data/switchboard.db") or "") .. (H.read(srv.dir .. "/data/switchboard.db-wal") or "")
  end

  it("never writes the API key secret to the log, the database or any admin answer", function()
    local outputs = {}
    -- connect and update answers, for people and as JSON
    srv.admin("tenant add tenant-c")
    srv.admin("tenant features tenant-c +custom.twilio")
    local function piped(args, secret)
      return H.sh(("printf '%%s' %s | %s admin --config %s %s 2>&1"):format(H.q(secret), H.q(H.BIN), H.q(srv.conf), args))
    end
    outputs[#outputs + 1] = piped(("twilio connect --tenant tenant-c --account-sid %s --api-key-sid %s --hosts %s")
      :format(TW.SIM.ACCOUNT, MAIN_SK, sim.url), MAIN_SECRET)
    outputs[#outputs + 1] = piped(("--json twilio update --tenant tenant-c --api-key-sid %s"):format(MAIN_SK), MAIN_SECRET)
    outputs[#outputs + 1] = piped(("twilio update --tenant tenant-c --api-key-sid %s"):format(MAIN_SK), MAIN_SECRET)
    outputs[#outputs + 1] = piped(("twilio update --tenant tenant-c --api-key-sid %s"):format(MAIN_SK),
      "wrong-secret-000000000000")
    assert.truthy(outputs[1]:find("connected", 1, true), outputs[1])
    for _, cmd in ipairs({ "twilio show --tenant tenant-a", "twilio test --tenant tenant-a", "tenant list",
                           "agent list", "audit settings --tenant tenant-a", "twilio numbers --tenant tenant-a",
                           "executions --tenant tenant-a", "twilio messages --tenant tenant-a",
                           "escalations --tenant tenant-a --status all", "status", "audit verify",
                           "twilio autonomous-sends on --tenant tenant-c --confirm" }) do
      outputs[#outputs + 1] = json.encode(srv.admin(cmd))
      outputs[#outputs + 1] = srv.admin_text(cmd)
    end
    H.async(function()
      local c = TW.session(srv, token_a)
      TW.call(c, "twilio_account_overview", { action = "account_info" })
      TW.call(c, "twilio_search_messages", { action = "search", limit = 2 })
      c:close()
    end)
    srv.signal("HUP")
    os.execute("sleep 0.3")
    local everything = table.concat(outputs, "\n") .. (H.read(srv.log) or "") .. (H.read(srv.stderr) or "") .. db_bytes()
    for _, secret in ipairs({ MAIN_SECRET, TW.SIM.VOICE[2] }) do
      assert.falsy(everything:find(secret, 1, true), "the secret leaked")
    end
    -- what sqlite3 shows is sealed bytes: a versioned blob of IV, ciphertext and tag
    local hex = H.sh(("sqlite3 %s 'SELECT hex(secret) FROM connections ORDER BY tenant_id LIMIT 1'")
      :format(srv.dir .. "/data/switchboard.db")):gsub("%s+", "")
    assert.truthy(#hex >= 2 * (2 + 16 + 32 + 32))
    assert.equal("0101", hex:sub(1, 4))
    local plain = H.sh(("sqlite3 %s 'SELECT secret FROM connections'"):format(srv.dir .. "/data/switchboard.db"))
    assert.falsy(plain:find("secret", 1, true))
  end)

  it("does not open a sealed secret copied into another tenant's row", function()
    TW.sql(srv, "UPDATE connections SET secret = (SELECT secret FROM connections c2 WHERE c2.tenant_id ="
      .. " (SELECT id FROM tenants WHERE name = 'tenant-a')), key_id = '" .. MAIN_SK .. "',"
      .. " settings = json_set(settings, '$.account_sid', '" .. TW.SIM.ACCOUNT .. "')"
      .. " WHERE tenant_id = (SELECT id FROM tenants WHERE name = 'tenant-b')")
    local res = H.async(function()
      local c = TW.session(srv, token_b)
      local out = TW.call(c, "twilio_account_overview", { action = "account_info" })
      c:close()
      return out
    end)
    assert.is_true(res.isError)
    assert.truthy(res.text:find("could not be opened", 1, true))
    local before = H.async(function() return sim.last() end)
    local r = srv.admin("twilio test --tenant tenant-b")
    assert.is_false(r.ok)
    assert.equal(before, H.async(function() return sim.last() end))
  end)

  it("keeps each agent inside its tenant on every tool and admin path", function()
    H.async(function()
      local a = TW.session(srv, token_a)
      local acct = TW.call(a, "twilio_account_overview", { action = "account_info" })
      assert.equal("Acme Clinic", acct.data.name or acct.data.friendly_name or acct.data.account_name)
      -- tenant-a's agent asking for tenant-b's numbers and messages sees only its own account
      local msgs = TW.call(a, "twilio_search_messages", { action = "search", to = "+14155550123", limit = 5 })
      assert.is_nil(msgs.isError)
      local calls = TW.call(a, "twilio_manage_calls", { action = "get_details", call_sid = "CA00000000000000000000000000000010" })
      assert.is_true(calls.isError)
      -- a claimed tenant or token in _meta changes nothing
      local r = a:request("tools/call", { name = "twilio_account_overview", arguments = { action = "list_phone_numbers" },
        _meta = { ["io.switchboard/token"] = token_b, ["io.switchboard/tenant"] = "tenant-b" } })
      local numbers = json.encode(r.result.structuredContent)
      assert.truthy(numbers:find("+14155550100", 1, true))
      assert.falsy(numbers:find("+14155550110", 1, true))
      a:close()
    end)
    -- admin paths are scoped by the tenant named
    local esc = srv.admin("escalations --tenant tenant-b")
    assert.equal(0, #esc.escalations)
    local _, code, err = srv.admin("execution show conn-1 --tenant tenant-b")
    assert.equal(1, code)
    assert.truthy(err:find("no execution", 1, true))
    local ex = srv.admin("executions --tenant tenant-b")
    for _, e in ipairs(ex.executions) do assert.are_not.equal("bot-a", e.agent) end
    local agents = srv.admin("agent list --tenant tenant-b")
    for _, a in ipairs(agents.agents) do assert.equal("tenant-b", a.tenant) end
  end)
end)
