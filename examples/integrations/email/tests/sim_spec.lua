-- The email simulator on its own, over real HTTP: the Bearer check, the
-- scopes, and POST /v3/mail/send refusing what SendGrid refuses, in
-- SendGrid's error shape ({ errors = { { message, field } } }).
local H = require("helpers")
local http = require("core.http")
local json = require("switchboard.json")
local E = dofile((os.getenv("SB_ROOT") or ".") .. "/examples/integrations/email/tests/env.lua")

describe("the email simulator", function()
  local sim
  setup(function() sim = E.sim() end)
  teardown(function() sim.stop() end)

  local function req(method, path, key, body, ctype)
    return H.async(function()
      local headers = { ["Content-Type"] = body and (ctype or "application/json") or nil,
                        Authorization = key and ("Bearer " .. key) or nil }
      local res = assert(http.request({ method = method, url = sim.url .. path, headers = headers,
        body = body and (type(body) == "string" and body or json.encode(body)) or nil }))
      return res.status, json.decode(res.body ~= "" and res.body or "null"), res.headers
    end)
  end

  local function mail(over)
    local m = { personalizations = { { to = { { email = "ana@example.com" } } } }, from = { email = E.FROM },
                subject = "Hi", content = { { type = "text/plain", value = "Hello" } } }
    for k, v in pairs(over or {}) do m[k] = v end
    return m
  end

  it("needs a known Bearer key and answers its scopes", function()
    assert.equal(401, (req("GET", "/v3/scopes")))
    assert.equal(401, (req("GET", "/v3/scopes", "SG.unknown")))
    local status, body = req("GET", "/v3/scopes", E.SEND_ONLY)
    assert.equal(200, status)
    assert.same({ "mail.send" }, body.scopes)
  end)

  it("refuses each missing or malformed part of a send, naming the field", function()
    local cases = {
      { mail({ personalizations = {} }), 400, "personalizations" },
      { mail({ personalizations = { { to = {} } } }), 400, "personalizations.0.to" },
      { mail({ personalizations = { { to = { { email = "nope" } } } } }), 400, "personalizations.0.to.0.email" },
      { mail({ from = { name = "x" } }), 400, "from.email" },
      { mail({ subject = "" }), 400, "subject" },
      { mail({ content = {} }), 400, "content" },
      { mail({ content = { { value = "x" } } }), 400, "content.0.type" },
      { mail({ content = { { type = "text/plain", value = "" } } }), 400, "content.0.value" },
      { mail({ from = { email = "stranger@example.com" } }), 403, "from" },
    }
    for _, c in ipairs(cases) do
      local status, body = req("POST", "/v3/mail/send", E.KEY, c[1])
      assert.equal(c[2], status, c[3])
      assert.equal(c[3], body.errors[1].field)
      assert.is_string(body.errors[1].message)
    end
    assert.equal(415, (req("POST", "/v3/mail/send", E.KEY, json.encode(mail()), "text/plain")))
    assert.equal(403, (req("POST", "/v3/mail/send", E.READ_ONLY, mail())))
    assert.equal(0, sim.stats().sends)
  end)

  it("takes a valid send with 202 and an X-Message-Id, and lists it by recipient", function()
    local status, _, headers = req("POST", "/v3/mail/send", E.KEY, mail())
    assert.equal(202, status)
    assert.truthy(headers["x-message-id"]:match("^[%w_%-]+$"))
    local lstatus, list = req("GET", '/v3/messages?query=to_email%3D%22ana%40example.com%22&limit=5', E.KEY)
    assert.equal(200, lstatus)
    assert.equal(1, #list.messages)
    assert.equal(headers["x-message-id"], list.messages[1].msg_id:match("^[^.]+"))
    assert.equal(403, (req("GET", "/v3/messages?query=x&limit=1", E.SEND_ONLY)))
    assert.equal(1, sim.stats().sends)
  end)
end)
