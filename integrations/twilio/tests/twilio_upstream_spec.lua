-- What the Twilio tools send upstream, end to end through the agent socket
-- against the simulator (`switchboard sim`): integers stay integers on the
-- wire, next-page links never take the credential to another host, and a
-- media URL must be a public http(s) address.
local H = require("helpers")
local TW = require("twilio_env")
local httpd = require("core.httpd")

local S = TW.SIM

describe("Twilio requests upstream", function()
  local sim, srv, token

  setup(function()
    sim = TW.sim()
    srv = TW.server({ config = { tool_settings = {
      -- pages of 2 calls, so a listing of 5 follows next_page_uri
      twilio_manage_calls = { page_size = 2 },
      -- send_whatsapp has a media allow-list, send_sms none
      twilio_send_whatsapp = { recheck_seconds = 0.05, media_domains = { "media.example.com" } },
    } } })
    token = TW.connect_sim(srv, sim, "acme")
  end)

  teardown(function()
    if srv then srv.stop() end
    if sim then sim.stop() end
  end)

  before_each(function()
    H.async(function() assert(sim.control("POST", "reset") == 200) end)
  end)

  local function with(fn) return TW.with(srv, token, fn) end

  local function is_error(r, ...)
    assert.is_true(r.isError, "expected an error, got: " .. r.text)
    for _, s in ipairs({ ... }) do
      assert.truthy(r.text:find(s, 1, true), ("%q not in %q"):format(s, r.text))
    end
  end

  local function ok(r)
    assert.is_nil(r.isError, "unexpected error: " .. r.text)
    return r.data
  end

  local function requests_of(fn)
    local before = sim.last()
    local r = fn()
    return r, (sim.requests(before))
  end

  describe("integers", function()
    it("sends an agent's limit of 5 as PageSize=5, which the simulator accepts like Twilio", function()
      with(function(c)
        for _, call in ipairs({ { "twilio_search_messages", { action = "search", limit = 5 } },
                                { "twilio_manage_calls", { action = "list_recent", limit = 2 } } }) do
          local r, reqs = requests_of(function() return TW.call(c, call[1], call[2]) end)
          local d = ok(r)
          assert.equal(call[2].limit, d.count)
          assert.equal(tostring(call[2].limit), reqs[1].params.PageSize)
          assert.truthy(reqs[1].query:find("PageSize=" .. call[2].limit, 1, true), reqs[1].query)
          for _, q in ipairs(reqs) do
            assert.is_nil(q.query:find("%d%.0"), q.query)
            assert.not_equal(400, q.status)
          end
        end
      end)
    end)

    it("writes integers as integers in error texts", function()
      with(function(c)
        local r = TW.call(c, "twilio_search_messages", { action = "search", limit = 101 })
        is_error(r, "`limit` must be at most 100 (got 101)")
        assert.is_nil(r.text:find("101.0", 1, true))
        r = TW.call(c, "twilio_manage_calls", { action = "list_recent", limit = 0 })
        is_error(r, "`limit` must be at least 1 (got 0)")
      end)
    end)
  end)

  describe("next-page links", function()
    it("follows no link off the API host: another listener gets no request and no credential", function()
      with(function(c)
        local seen = {}
        local other = assert(httpd.listen({ host = "127.0.0.1", port = 0, handler = function(req)
          seen[#seen + 1] = { path = req.path, authorization = req.headers.authorization }
          return 200, { ["Content-Type"] = "application/json" }, '{"calls":[],"next_page_uri":null}'
        end }))
        local p2 = other:port()
        local links = {
          -- text appended to the base URL made the base host a user name
          { ("@127.0.0.1:%d/x"):format(p2), "Twilio has no such resource" },
          { ("http://127.0.0.1:%d/2010-04-01/Accounts/%s/Calls.json"):format(p2, S.ACCOUNT), "not followed" },
          { ("//127.0.0.1:%d/x"):format(p2), "not followed" },
          { ("http://127.0.0.1:%d@127.0.0.1:%d/x"):format(sim.port, p2), "not followed" },
          { ("https://127.0.0.1:%d/x"):format(sim.port), "not followed" },
          { ("http://user:pw@127.0.0.1:%d/2010-04-01/Accounts/%s/Calls.json"):format(sim.port, S.ACCOUNT),
            "not followed" },
        }
        for _, link in ipairs(links) do
          assert(sim.faults({ { action = "next_page", next_page_uri = link[1],
                                match = { path_pattern = "/Calls%.json$" } } }) == 200)
          local r, reqs = requests_of(function()
            return TW.call(c, "twilio_manage_calls", { action = "list_recent", limit = 5 })
          end)
          is_error(r, link[2])
          assert.equal(0, #seen, link[1] .. ": the other listener was called")
          assert.truthy(#reqs >= 1)
          assert.equal("2", reqs[1].params.PageSize)
        end
        other:close()
        -- the refusals are in the server's log, with the link's origin
        local logged = H.read(srv.dir .. "/server.log") or ""
        assert.truthy(logged:find(("not following a api page link that leaves http://127.0.0.1:%d (http://127.0.0.1:%d)")
          :format(sim.port, p2), 1, true), logged)
        -- a link to the same host is followed as before
        local d = ok(TW.call(c, "twilio_manage_calls", { action = "list_recent", limit = 5 }))
        assert.equal(5, d.count)
      end)
    end)
  end)

  describe("media_url", function()
    local private = {
      { "http://127.0.0.1/a.png", "a loopback address" },
      { "http://2130706433/a.png", "a loopback address" },
      { "http://0x7f.1/a.png", "a loopback address" },
      { "http://0177.0.0.1/a.png", "a loopback address" },
      { "http://127.1/a.png", "a loopback address" },
      { "http://[::1]/a.png", "a loopback address" },
      { "http://[::ffff:127.0.0.1]/a.png", "a loopback address" },
      { "http://[::ffff:7f00:1]/a.png", "a loopback address" },
      { "http://169.254.169.254/latest/meta-data/", "a link-local address" },
      { "http://[fe80::1%25eth0]/a.png", "a link-local address" },
      { "http://[::ffff:169.254.169.254]/", "a link-local address" },
      { "http://10.0.0.1/a.png", "a private address" },
      { "http://172.16.5.4/a.png", "a private address" },
      { "http://192.168.1.1/a.png", "a private address" },
      { "http://[fc00::1]/a.png", "a private address" },
      { "http://[fd12:3456::1]/a.png", "a private address" },
      { "http://0.0.0.0/a.png", "an unspecified address" },
      { "http://0/a.png", "an unspecified address" },
      { "http://[::]/a.png", "an unspecified address" },
      { "http://localhost/a.png", "a local host name" },
      { "http://LOCALHOST./a.png", "a local host name" },
      { "http://media.localhost/a.png", "a local host name" },
      { "http://printer.local/a.png", "a local host name" },
      { "http://intranet/a.png", "a single-label host name" },
      { "https://example.com@127.0.0.1/a.png", "a user name or password in the URL" },
      { "http://%31%32%37.0.0.1/a.png", "a loopback address" },
      { "http://169.254.169.254./latest/meta-data/", "a link-local address" },
      { "http://0x7f.1./a.png", "a loopback address" },
      { "http://10.0.0.1./a.png", "a private address" },
    }

    local function refuses(c, tool, base, cases)
      local before = sim.last()
      for _, case in ipairs(cases) do
        local args = {}
        for k, v in pairs(base) do args[k] = v end
        args.media_url = case[1]
        local r = TW.call(c, tool, args)
        is_error(r, "Invalid arguments: `media_url` must be a public http(s) URL (got " .. case[2] .. ")")
      end
      assert.equal(0, #sim.requests(before))
    end

    it("twilio_send_sms refuses loopback, link-local, private and local addresses in every form", function()
      with(function(c)
        refuses(c, "twilio_send_sms", { to = S.ANA, body = "The map" }, private)
        -- a public URL goes to Twilio as MediaUrl
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "The map", media_url = "https://example.com/map.png" })
        end)
        assert.equal(1, ok(r).num_media)
        assert.equal("https://example.com/map.png", reqs[1].form.MediaUrl)
      end)
    end)

    it("twilio_send_whatsapp refuses the same, and keeps to its media_domains allow-list", function()
      with(function(c)
        refuses(c, "twilio_send_whatsapp", { to = S.ANA, body = "The map" }, private)
        local before = sim.last()
        for _, url in ipairs({ "https://example.com/a.png", "https://media.example.com.evil.org/a.png",
                               "https://8.8.8.8/a.png", "https://notmedia.example.com/a.png" }) do
          is_error(TW.call(c, "twilio_send_whatsapp", { to = S.ANA, body = "The map", media_url = url }),
            "Invalid arguments: `media_url` must be on one of the allowed media domains (media.example.com)")
        end
        assert.equal(0, #sim.requests(before))
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_send_whatsapp", { to = S.ANA, body = "The map",
                                                       media_url = "https://cdn.media.example.com/map.png" })
        end)
        ok(r)
        assert.equal("https://cdn.media.example.com/map.png", reqs[1].form.MediaUrl)
      end)
    end)
  end)
end)
