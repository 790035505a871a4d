-- The console's listener over real HTTP, below the browser: Host and
-- Origin checks, the headers of every answer, the session cookie, links
-- that work once, a tenant administrator's methods, and console-link
-- while the console is off.
local H = require("helpers")
local TW = require("twilio_env")
local http = require("core.http")

local function form_body(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = k .. "=" .. tostring(v):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)
  end
  return table.concat(parts, "&")
end

describe("the console's listener", function()
  local srv, port, base, acme_token

  setup(function()
    port = TW.free_ports(1)[1]
    base = "http://127.0.0.1:" .. port
    srv = TW.server({ config = { console = { listen = "127.0.0.1:" .. port } } })
    acme_token = srv.agent("acme", "bot", "caioo", "Examples")
    srv.agent("other", "bot", "caioo", "Examples")
  end)
  teardown(function() srv.stop() end)

  local function req(opts)
    return H.async(function()
      opts.url = base .. opts.path
      opts.path = nil
      if opts.form then
        opts.method = opts.method or "POST"
        opts.body = form_body(opts.form)
        opts.headers = opts.headers or {}
        opts.headers["Content-Type"] = "application/x-www-form-urlencoded"
        opts.form = nil
      end
      return assert(http.request(opts))
    end)
  end

  local function login(args)
    local url = assert(srv.admin("console-link " .. (args or "")).url)
    local token = url:match("token=(.+)$")
    local res = req({ path = "/login", form = { token = token } })
    assert.equal(303, res.status, res.body)
    return res.headers["set-cookie"]:match("^sb_console=([^;]+)"), res, token
  end

  local function page(path, cookie)
    return req({ path = path, headers = { Cookie = "sb_console=" .. cookie } })
  end

  it("answers every request with the strict headers, and refuses an unknown Host", function()
    local res = req({ path = "/login" })
    assert.equal(200, res.status)
    assert.equal("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self';"
      .. " frame-ancestors 'none'; base-uri 'none'", res.headers["content-security-policy"])
    assert.equal("nosniff", res.headers["x-content-type-options"])
    assert.equal("DENY", res.headers["x-frame-options"])
    assert.equal("no-store", res.headers["cache-control"])
    local bad = req({ path = "/login", headers = { Host = "evil.example" } })
    assert.equal(403, bad.status)
  end)

  it("logs in once per link, with an HttpOnly SameSite=Strict cookie, and never with a foreign Origin", function()
    local url = assert(srv.admin("console-link").url)
    local token = url:match("token=(.+)$")
    local foreign = req({ path = "/login", form = { token = token }, headers = { Origin = "http://evil.example" } })
    assert.equal(403, foreign.status)
    local res = req({ path = "/login", form = { token = token } })
    assert.equal(303, res.status)
    local cookie = res.headers["set-cookie"]
    assert.truthy(cookie:find("; HttpOnly", 1, true), cookie)
    assert.truthy(cookie:find("; SameSite=Strict", 1, true), cookie)
    assert.falsy(cookie:find("Secure", 1, true), cookie)    -- plain HTTP on loopback
    local again = req({ path = "/login", form = { token = token } })
    assert.equal(403, again.status)
    assert.truthy(again.body:find("already used or expired", 1, true))
    -- the token is kept nowhere but in the server's memory, as a hash
    assert.falsy(H.read(srv.log):find(token, 1, true))
    for _, r in ipairs(H.sql_rows(srv, "SELECT params, detail FROM audit_log")) do
      assert.falsy(tostring(r.params):find(token, 1, true))
      assert.falsy(tostring(r.detail):find(token, 1, true))
    end
  end)

  it("keeps a tenant administrator to their tenant and out of the operators' methods", function()
    local cookie = login("--tenant other")
    assert.equal(303, page("/", cookie).status)
    assert.equal("/t/other", page("/", cookie).headers.location)
    assert.equal(200, page("/t/other/agents", cookie).status)
    assert.equal(403, page("/t/acme/agents", cookie).status)
    assert.equal(403, page("/tenants", cookie).status)
    local agents = page("/t/other/agents", cookie)
    local csrf = agents.body:match('name="_csrf" value="(%x+)"')
    assert.truthy(csrf)
    local r = req({ path = "/tenants/add", form = { _csrf = csrf, name = "sneaky" },
                    headers = { Cookie = "sb_console=" .. cookie } })
    assert.equal(403, r.status)
    assert.falsy(srv.admin_text("tenant list"):find("sneaky", 1, true))
    -- revoke through a form naming another tenant's agent: their own tenant's bot is the one meant
    r = req({ path = "/t/other/agents/revoke", form = { _csrf = csrf, agent = "bot", tenant = "acme", confirm = "yes" },
              headers = { Cookie = "sb_console=" .. cookie } })
    assert.equal(303, r.status)
    assert.equal("active", srv.admin("agent list --tenant acme").agents[1].status)
    assert.equal("revoked", srv.admin("agent list --tenant other").agents[1].status)
    local log = srv.admin("audit settings --tenant other").changes
    assert.equal("agent.revoke", log[1].action)
    assert.truthy(log[1].actor:find("^console: admin of tenant other %(link by uid %d+"), log[1].actor)
  end)

  it("refuses a form without its CSRF token, and changes nothing", function()
    local cookie = login()
    local r = req({ path = "/tenants/add", form = { name = "nocsrf" }, headers = { Cookie = "sb_console=" .. cookie } })
    assert.equal(403, r.status)
    assert.truthy(r.body:find("CSRF", 1, true))
    assert.falsy(srv.admin_text("tenant list"):find("nocsrf", 1, true))
  end)

  it("escapes what it shows: an agent's execution id cannot inject markup", function()
    local id = [[run"><img src=x onerror=alert(1)>]]
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      assert(c:initialize(acme_token).result)
      local r = c:call("example_clock", {}, { ["io.switchboard/execution"] = id })
      assert(r.result, "example_clock failed")
      c:close()
    end)
    local cookie = login()
    local body = page("/t/acme/executions", cookie).body
    assert.falsy(body:find("<img", 1, true))
    assert.truthy(body:find("run&quot;&gt;&lt;img src=x onerror=alert(1)&gt;", 1, true), body)
    -- its link carries the id percent-encoded, and the detail page escapes it too
    local href = body:match('<a href="([^"]+)" class="execution%-link">')
    assert.truthy(href and href:find("id=run%22%3E%3Cimg", 1, true), href)
    local detail = page(href:gsub("&amp;", "&"), cookie)
    assert.equal(200, detail.status)
    assert.falsy(detail.body:find("<img", 1, true))
    assert.truthy(detail.body:find("example_clock", 1, true))
  end)
end)

describe("console-link", function()
  it("refuses while the console is off", function()
    local srv = H.server({})
    local _, code, err = srv.admin("console-link")
    srv.stop()
    assert.equal(1, code)
    assert.truthy(err:find("the console is off; set console.listen", 1, true), err)
  end)

  it("refuses a console on a public address without TLS", function()
    local port = TW.free_ports(1)[1]
    local srv = H.server({ start = false, config = { console = { listen = "0.0.0.0:" .. port } } })
    local out = H.sh(("%s serve --config %s 2>&1"):format(H.q(H.BIN), H.q(srv.conf)))
    assert.truthy(out:find("console.listen 0.0.0.0:" .. port .. " is not a loopback address", 1, true), out)
  end)
end)
