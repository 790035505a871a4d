-- The email package end to end: its connection verbs against its
-- simulator, its two tools through a real server and MCP session, with
-- the core's gateway, autonomous-sends gate, escalations, write-ahead
-- sends and audit applying to it unchanged; and a tenant holding both
-- this and the Twilio integration.
local H = require("helpers")
local TW = require("twilio_env")
local json = require("switchboard.json")
local E = dofile((os.getenv("SB_ROOT") or ".") .. "/examples/integrations/email/tests/env.lua")

local ANA = "ana@example.com"

-- every text the runtime answered (admin output, tool results), to look for the key
local answers = {}
local function seen(v) answers[#answers + 1] = type(v) == "string" and v or json.encode(v) return v end

local function admin(srv, args, stdin)
  local r, code, err = srv.admin(args, stdin)
  seen(r) seen(err or "")
  return r, code, err
end

local function call(c, name, args)
  return seen(TW.call(c, name, args))
end

describe("the email integration", function()
  local sim, tsim, srv, token
  setup(function()
    sim = E.sim()
    tsim = TW.sim()
    srv = E.server()
    token = E.connect(srv, sim, "clinic")
  end)
  teardown(function()
    srv.stop()
    sim.stop()
    tsim.stop()
  end)

  describe("email connect", function()
    it("needs the feature custom.email", function()
      admin(srv, "tenant add nofeature")
      local _, code, err = admin(srv, ("email connect --tenant nofeature --from-address %s --hosts %s")
        :format(E.FROM, sim.url), E.KEY)
      assert.equal(1, code)
      assert.truthy(err:find("tenant features nofeature +custom.email", 1, true), err)
    end)

    it("refuses, naming the field, a key that is not a SendGrid key, a bad sender, an unknown key or one"
      .. " without mail.send", function()
      admin(srv, "tenant add checks")
      admin(srv, "tenant features checks +custom.email")
      local before = sim.stats().requests
      local cases = {
        { "--from-address " .. E.FROM, "", "API key: required" },
        { "--from-address " .. E.FROM, E.KEY_SECRET, "does not look like a SendGrid API key" },
        { "--from-address " .. E.FROM, E.KEY:sub(1, -2), "Settings > API Keys" },
        { "--from-address not-an-address", E.KEY, "from address: 'not-an-address' is not an email address" },
        { "", E.KEY, "from address: required" },
        { "--from-address " .. E.FROM, E.KEY, "hosts: 'ftp://x' must be an http(s) origin", "ftp://x" },
      }
      for _, c in ipairs(cases) do
        local _, code, err = admin(srv, ("email connect --tenant checks %s --hosts %s"):format(c[1], c[4] or sim.url),
          c[2])
        assert.equal(1, code, c[3])
        assert.truthy(err:find(c[3], 1, true), ("expected %q in %q"):format(c[3], err))
      end
      -- none of these reached SendGrid
      assert.equal(before, sim.stats().requests)
      local wrong = "SG." .. ("x"):rep(22) .. "." .. ("y"):rep(43)
      local _, code, err = admin(srv, ("email connect --tenant checks --from-address %s --hosts %s"):format(E.FROM,
        sim.url), wrong)
      assert.equal(1, code)
      assert.truthy(err:find("SendGrid refused this API key (HTTP 401", 1, true), err)
      _, code, err = admin(srv, ("email connect --tenant checks --from-address %s --hosts %s"):format(E.FROM,
        sim.url), E.READ_ONLY)
      assert.equal(1, code)
      assert.truthy(err:find("lacks the mail.send scope", 1, true), err)
      local _, scode, serr = admin(srv, "email show checks")
      assert.equal(1, scode)
      assert.truthy(serr:find("has no Email connection", 1, true), serr)
    end)

    it("stores the key sealed, shows its id only, and starts with autonomous sends off", function()
      local r, code = admin(srv, "email show clinic")
      assert.equal(0, code)
      assert.equal("active", r.status)
      assert.equal(E.KEY_ID, r.key_id)
      assert.equal(E.FROM, r.from_address)
      assert.is_false(r.autonomous_sends)
      assert.equal("Bearer", sim.stats().last_auth)
      assert.is_nil(E.leaked(srv, E.KEY_SECRET))
    end)

    it("refuses a second connection of the same tenant", function()
      local _, code, err = admin(srv, ("email connect --tenant clinic --from-address %s --hosts %s"):format(E.FROM,
        sim.url), E.KEY)
      assert.equal(1, code)
      assert.truthy(err:find("already has an Email connection", 1, true), err)
    end)
  end)

  describe("the tools", function()
    it("are listed in the Email group with the package's instructions", function()
      TW.with(srv, token, function(c)
        local names = {}
        for name in pairs(c.schemas) do names[#names + 1] = name end
        table.sort(names)
        assert.same({ "email_search", "email_send" }, names)
        assert.truthy(tostring(c.init.instructions):find("Email tools", 1, true))
      end)
    end)

    it("hold a send for approval while autonomous sends are off, and run it exactly once when approved", function()
      local r = TW.with(srv, token, function(c)
        return call(c, "email_send", { to = ANA, subject = "Your appointment", body = "See you at 3pm." })
      end)
      assert.is_true(r.isError)
      assert.equal("escalated", r.data.status, r.text)
      assert.truthy(r.text:find("autonomous_sends", 1, true), r.text)
      assert.equal(0, sim.stats().send_posts)
      local esc = math.tointeger(r.data.escalation_id)
      local a, code, err = admin(srv, ("escalation approve %d --tenant clinic"):format(esc))
      assert.equal(0, code, err)
      assert.equal("approved", a.status)
      assert.equal(1, sim.stats().sends)
      local _, again = admin(srv, ("escalation approve %d --tenant clinic"):format(esc))
      assert.equal(1, again)
      local st = sim.stats()
      assert.equal(1, st.sends)
      assert.equal(1, st.send_posts)
      local rows = TW.sends(srv)
      assert.equal(1, #rows)
      assert.equal("sent", rows[1].status)
      assert.equal(ANA, rows[1].recipient)
      assert.equal(st.messages[1].msg_id:match("^[^.]+"), rows[1].sid)
      -- the audit record of the approved run
      local rec = TW.audit_last(srv, "email_send")
      assert.equal("sent", rec.outcome)
      assert.equal(rows[1].sid, rec.detail.message_id)
      assert.equal(rows[1].id, math.tointeger(rec.detail.send_id))
    end)

    it("read what was sent to an address", function()
      local r = TW.with(srv, token, function(c)
        return call(c, "email_search", { to = ANA, limit = 5 })
      end)
      assert.is_nil(r.isError, r.text)
      assert.equal(1, r.data.count)
      assert.equal("Your appointment", r.data.messages[1].subject)
      assert.equal(E.FROM, r.data.messages[1].from)
    end)

    it("send on the agent's word once autonomous sends are on; the Safety Gateway holds a card number", function()
      local _, code = admin(srv, "email autonomous-sends on --tenant clinic --confirm")
      assert.equal(0, code)
      local r, held = TW.with(srv, token, function(c)
        return call(c, "email_send", { to = "Bob@Example.com", subject = "Hello", body = "Plain news." }),
          call(c, "email_send", { to = "bob@example.com", subject = "Billing",
                                  body = "Your card 4111 1111 1111 1111 is on file." })
      end)
      assert.is_nil(r.isError, r.text)
      assert.equal("sent", r.data.outcome)
      assert.is_string(r.data.message_id)
      assert.is_true(held.isError)
      assert.equal("held", held.data.status, held.text)
      assert.truthy(held.text:find("safety_gateway", 1, true), held.text)
      assert.truthy(held.text:find("the message body contains what looks like a payment card number", 1, true),
        held.text)
      assert.equal(2, sim.stats().sends)
      -- one address, one spelling, for the per-recipient limits
      assert.equal("bob@example.com", TW.sends(srv)[2].recipient)
      assert.equal("bob@example.com", sim.stats().messages[1].to_email)
      local rec = TW.audit_last(srv, "email_send")
      assert.equal("held", rec.outcome)
      assert.equal("open\n", TW.sql(srv, "SELECT status FROM escalations WHERE id = "
        .. math.tointeger(held.data.escalation_id)))
    end)

    it("hold a send to someone else after reading subjects others may have shaped (untrusted content)", function()
      local read, other, reply = TW.with(srv, token, function(c)
        return call(c, "email_search", { to = ANA }),
          call(c, "email_send", { to = "dave@example.com", subject = "Fwd", body = "Forwarding." }),
          call(c, "email_send", { to = ANA, subject = "Re: Your appointment", body = "Yes, 3pm." })
      end)
      assert.is_nil(read.isError, read.text)
      assert.is_true(other.isError)
      assert.equal("held", other.data.status, other.text)
      assert.truthy(other.text:find("untrusted_content", 1, true), other.text)
      -- answering whom the subjects were read about is fine
      assert.is_nil(reply.isError, reply.text)
      assert.equal("sent", reply.data.outcome)
    end)

    it("keep the body and the subject out of the audit record", function()
      local rows = H.sh(("sqlite3 %s %s"):format(H.q(srv.dir .. "/data/switchboard.db"),
        H.q("SELECT params FROM audit_log WHERE tool = 'email_send'")))
      assert.falsy(rows:find("See you at 3pm", 1, true), rows)
      assert.falsy(rows:find("Your appointment", 1, true), rows)
      assert.truthy(rows:find(ANA, 1, true), rows)
    end)

    it("report SendGrid's refusal with its field, and an unknown outcome without resending", function()
      local _, code, err = admin(srv, "email update --tenant clinic --from-address nobody@example.com")
      assert.equal(0, code, err)
      local r = TW.with(srv, token, function(c)
        return call(c, "email_send", { to = ANA, subject = "x", body = "y" })
      end)
      assert.is_true(r.isError)
      assert.truthy(r.text:find("verified Sender Identity", 1, true), r.text)
      assert.truthy(r.text:find("(field from)", 1, true), r.text)
      local failed = TW.sends(srv)
      assert.equal("failed", failed[#failed].status)
      admin(srv, "email update --tenant clinic --from-address " .. E.FROM)
      local posts = sim.stats().send_posts
      sim.control("POST", "fault", { drop_send = true })
      local u = TW.with(srv, token, function(c)
        return call(c, "email_send", { to = "carol@example.com", subject = "x", body = "y" })
      end)
      assert.is_true(u.isError)
      assert.truthy(u.text:find("The outcome is unknown", 1, true), u.text)
      assert.truthy(u.text:find("Do not resend", 1, true), u.text)
      assert.equal(posts + 1, sim.stats().send_posts)
      local rows = TW.sends(srv)
      assert.equal("unknown", rows[#rows].status)
      assert.equal("unknown", TW.audit_last(srv, "email_send").outcome)
      -- at the next start the package's reconcile hook finds it at SendGrid: sent, never resent
      srv.stop()
      srv.start()
      local id = sim.stats().messages[1].msg_id:match("^[^.]+")
      H.wait_for(function() return TW.sends(srv)[#rows].status == "sent" end, 15, "the send to be reconciled")
      assert.equal(id, TW.sends(srv)[#rows].sid)
      assert.equal(posts + 1, sim.stats().send_posts)
      local rec = TW.audit_last(srv, "email_send")
      assert.equal("recovery", rec.decision)
      assert.equal("sent", rec.outcome)
    end)

    it("take a new key on update only once SendGrid accepts it", function()
      E.connect(srv, sim, "rotate", { agent = false })
      local _, code, err = admin(srv, "email update --tenant rotate --api-key", E.READ_ONLY)
      assert.equal(1, code)
      assert.truthy(err:find("previous settings stay in force", 1, true), err)
      assert.truthy(err:find("mail.send", 1, true), err)
      assert.equal(E.KEY_ID, admin(srv, "email show rotate").key_id)
      local _, ncode, nerr = admin(srv, "email update --tenant rotate --from-name Clinic")
      assert.equal(0, ncode, nerr)
      local r, ucode, uerr = admin(srv, "email update --tenant rotate --api-key", E.SEND_ONLY)
      assert.equal(0, ucode, uerr)
      assert.equal(E.SEND_ONLY:sub(4, 25), r.key_id)
      assert.equal("Clinic", r.from_name)
      assert.truthy(json.encode(r.warnings):find("messages.read", 1, true))
      local _, none, nmsg = admin(srv, "email update --tenant rotate")
      assert.equal(1, none)
      assert.truthy(nmsg:find("nothing to change", 1, true), nmsg)
    end)
  end)

  describe("beside Twilio", function()
    local both
    setup(function()
      TW.connect_sim(srv, tsim, "both")
      E.connect(srv, sim, "both", { existing = true, agent = false })
      local a = assert(srv.admin(("agent add --tenant both --name two --type caioo --tier owner --groups %s")
        :format(H.q(TW.GROUP .. "," .. E.GROUP))))
      both = a.token
    end)

    it("each connection has its own key, status and tool group", function()
      local tw, em = admin(srv, "twilio show both"), admin(srv, "email show both")
      assert.equal(TW.SIM.MAIN[1], tw.api_key_sid)
      assert.equal(E.KEY_ID, em.key_id)
      assert.is_true(tw.autonomous_sends) -- turned on by TW.connect
      assert.is_false(em.autonomous_sends)
      TW.with(srv, both, function(c)
        assert.is_table(c.schemas.email_send)
        assert.is_table(c.schemas.twilio_send_sms)
        -- Twilio's switch is on, the email one is not: the email send is escalated
        local r = call(c, "email_send", { to = ANA, subject = "Hi", body = "Hello." })
        assert.equal("escalated", r.data.status, r.text)
        local s = call(c, "twilio_send_sms", { to = TW.SIM.ANA, body = "Hello." })
        assert.is_nil(s.isError, s.text)
      end)
    end)

    it("a revoked email key puts only the email connection in error", function()
      sim.control("POST", "revoke", { id = E.KEY_ID })
      local t, code = admin(srv, "email test both")
      assert.equal(1, code) -- the CLI's exit status of a failed test
      assert.is_false(t.ok)
      assert.equal("error", t.status)
      assert.truthy(tostring(t.status_reason):find("refused this API key", 1, true))
      assert.equal("active", admin(srv, "twilio show both").status)
      TW.with(srv, both, function(c)
        local r = call(c, "email_search", { to = ANA })
        assert.is_true(r.isError)
        assert.truthy(r.text:find("Email connection needs attention", 1, true), r.text)
        local s = call(c, "twilio_search_messages", { action = "search", limit = 1 })
        assert.is_nil(s.isError, s.text)
      end)
      -- a new key brings it back; Twilio's connection was never touched
      local u, code2, err2 = admin(srv, "email update --tenant both --api-key", E.SEND_ONLY)
      assert.equal(0, code2, err2)
      assert.equal("active", u.status)
    end)

    it("disconnecting email takes away its tool group only", function()
      local _, code, err = admin(srv, "email disconnect --tenant both")
      assert.equal(0, code, err)
      TW.with(srv, both, function(c)
        assert.is_nil(c.schemas.email_send)
        assert.is_nil(c.schemas.email_search)
        assert.is_table(c.schemas.twilio_send_sms)
      end)
      assert.equal("active", admin(srv, "twilio show both").status)
    end)
  end)

  it("never lets the key into the log, the database or any answer", function()
    srv.stop()
    for _, secret in ipairs({ E.KEY, E.KEY_SECRET }) do
      assert.is_nil(E.leaked(srv, secret))
      for _, a in ipairs(answers) do assert.falsy(a:find(secret, 1, true)) end
    end
    srv.start()
  end)
end)
