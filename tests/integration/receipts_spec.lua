-- Delivery receipts: Twilio's status callbacks, as the simulator posts
-- them (form-encoded, with retries, reordered) to the runtime's real HTTP
-- listener, and as a forger would post them with core.http.
local H = require("helpers")
local TW = require("twilio_env")
local http = require("core.http")
local vault = require("core.vault")
local json = require("switchboard.json")

local ANA = TW.SIM.ANA

local function sql_json(srv, q)
  return H.sql_rows(srv, q)
end

local function send_row(srv, id)
  return sql_json(srv, ("SELECT * FROM sends WHERE id = %d"):format(id))[1]
end

local function receipts_of(srv, id)
  local out = {}
  for _, r in ipairs(TW.audit(srv)) do
    if r.decision == "receipt" and type(r.detail) == "table" and r.detail.receipt_for == id then out[#out + 1] = r end
  end
  return out
end

-- The StatusCallback of the latest message the simulator received.
local function last_callback(sim)
  return H.async(function()
    local reqs = sim.requests(0)
    for i = #reqs, 1, -1 do
      local r = reqs[i]
      if r.method == "POST" and r.path:find("/Messages.json", 1, true) then return r.form.StatusCallback end
    end
  end)
end

local function split(url)
  local id, token = url:match("/twilio/status/(%d+)/([%w_-]+)$")
  return tonumber(id), token
end

-- POST a callback as Twilio does; returns the HTTP status.
local function post(base, id, token, form, key)
  return H.async(function()
    local res = assert(http.request({ method = "POST", url = ("%s/twilio/status/%s/%s"):format(base, id, token),
      form = form, headers = key and { ["I-Twilio-Idempotency-Token"] = key } or nil }))
    return res.status
  end)
end

local function sms(srv, token, body)
  return TW.with(srv, token, function(c) return TW.call(c, "twilio_send_sms", { to = ANA, body = body }) end)
end

-- Wait for n receipt records of send id (the audit trail is written a
-- moment after the send record), then check that no more come.
local function receipts_n(srv, id, n)
  H.wait_for(function() return #receipts_of(srv, id) >= n end, 10, ("%d receipt records of send %d"):format(n, id))
  H.sh("sleep 0.2")
  return #receipts_of(srv, id)
end

local function wait_delivery(srv, id, status)
  H.wait_for(function()
    local r = send_row(srv, id)
    return r and r.delivery_status == status
  end, 10, ("send %d to reach %s"):format(id, status))
  return send_row(srv, id)
end

describe("delivery receipts", function()
  local sim, srv, base, acme, beta
  setup(function()
    sim = TW.sim()
    local port = TW.free_ports(1)[1]
    base = "http://127.0.0.1:" .. port
    srv = TW.server({ config = { http = { listen = "127.0.0.1:" .. port, public_url = base } } })
    H.wait_for(function() return (H.read(srv.log) or ""):find("http: MCP on", 1, true) ~= nil end, 10,
      "http listener")
    acme = TW.connect_sim(srv, sim, "acme")
    beta = TW.connect_sim(srv, sim, "beta")
  end)
  teardown(function() srv.stop() sim.stop() end)
  before_each(function()
    H.async(function()
      sim.control("POST", "settings", { callback_retries = 0, callback_order = "in_order", callback_delay_ms = 0 })
    end)
  end)

  it("a send carries a per-send callback; its record reaches delivered; only the token's hash is stored", function()
    local r = sms(srv, acme, "receipts: first")
    assert.is_falsy(r.isError, r.text)
    local url = last_callback(sim)
    assert.truthy(url, "the send carried no StatusCallback")
    local id, token = split(url)
    assert.truthy(id and token, url)
    assert.equals(43, #token)
    assert.equals(base .. "/twilio/status/" .. id .. "/" .. token, url)
    local row = wait_delivery(srv, id, "delivered")
    assert.equals("sent", row.status)
    assert.equals(r.data.sid, row.sid)
    assert.truthy(row.delivered_at)
    assert.equals(vault.sha256_hex(token), row.callback_token_hash)
    -- the token itself is nowhere in the database
    local _, code = H.sh(("grep -c -a -F %s %s/data/switchboard.db*"):format(H.q(token), H.q(srv.dir)))
    assert.are_not.equals(0, code)
    -- in the call's execution, and in get_details
    assert.equals(2, receipts_n(srv, id, 2)) -- sent, delivered
    local recs = receipts_of(srv, id)
    assert.equals("delivered", recs[2].outcome)
    local call = TW.audit_last(srv, "twilio_send_sms")
    local exec = sql_json(srv, ("SELECT DISTINCT execution_id FROM audit_log WHERE id IN (%d, %d, %d)")
      :format(call.id, recs[1].id, recs[2].id))
    assert.equals(1, #exec)
    local shown = srv.admin(("execution show %s --tenant acme"):format(H.q(exec[1].execution_id)))
    local seen = {}
    for _, c in ipairs(type(shown) == "table" and shown.calls or {}) do
      if c.decision == "receipt" then seen[#seen + 1] = c.outcome end
    end
    assert.same({ "sent", "delivered" }, seen, json.encode(shown))
    local d = TW.with(srv, acme, function(c)
      return TW.call(c, "twilio_search_messages", { action = "get_details", message_sid = row.sid })
    end)
    assert.is_falsy(d.isError, d.text)
    assert.equals("delivered", d.data.delivery.status)
    assert.equals(id, d.data.delivery.send_id)
    assert.is_true(d.data.delivery.receipts)
    assert.truthy(d.text:find("Delivery receipt (status callback): delivered", 1, true), d.text)
    -- counted in the metrics
    local m = H.async(function() return assert(http.request({ url = base .. "/metrics" })).body end)
    assert.truthy(m:find('switchboard_delivered_ratio{tenant="acme"} 1', 1, true), m)
  end)

  it("refuses a forged token, another send's token and a callback for another tenant's send", function()
    assert.is_falsy(sms(srv, acme, "receipts: acme").isError)
    local ida, toka = split(last_callback(sim))
    assert.is_falsy(sms(srv, beta, "receipts: beta").isError)
    local idb, tokb = split(last_callback(sim))
    local a = wait_delivery(srv, ida, "delivered")
    local b = wait_delivery(srv, idb, "delivered")
    local function form(row, status)
      return { MessageSid = row.sid, MessageStatus = status, AccountSid = TW.SIM.ACCOUNT, To = ANA,
               From = TW.SIM.DEFAULT, ErrorCode = "30003" }
    end
    local forged = vault.base64url(vault.random(32))
    assert.equals(404, post(base, ida, forged, form(a, "read")))
    assert.equals(404, post(base, ida, tokb, form(a, "read")))           -- another send's token
    assert.equals(404, post(base, idb, toka, form(b, "read")))           -- another tenant's send
    assert.equals(404, post(base, ida + 1000, toka, form(a, "read")))    -- no such send
    assert.equals(409, post(base, ida, toka, form(b, "read")))           -- another message
    local other = form(a, "read")
    other.AccountSid = TW.SIM.VOICE_ACCOUNT
    assert.equals(403, post(base, ida, toka, other))                      -- another account
    assert.equals(400, post(base, ida, toka, { MessageSid = a.sid, MessageStatus = "bogus" }))
    assert.same(a, send_row(srv, ida))
    assert.same(b, send_row(srv, idb))
    assert.equals(2, receipts_n(srv, ida, 2))
  end)

  it("ignores replays and Twilio's retries: one change, one audit record per status", function()
    H.async(function() sim.control("POST", "settings", { callback_retries = 2 }) end)
    assert.is_falsy(sms(srv, acme, "receipts: retried").isError)
    local id, token = split(last_callback(sim))
    local row = wait_delivery(srv, id, "delivered")
    H.wait_for(function()
      local n = 0
      local cbs = H.async(function() return select(2, sim.control("GET", "callbacks")).callbacks end)
      for _, c in ipairs(cbs) do if c.sid == row.sid and c.http_status == 200 then n = n + 1 end end
      return n == 6
    end, 10, "the six posts (two statuses, three times each)")
    assert.equals(2, receipts_n(srv, id, 2))
    row = send_row(srv, id)
    -- a replay of what came, with its key and without
    local f = { MessageSid = row.sid, MessageStatus = "delivered", AccountSid = TW.SIM.ACCOUNT }
    assert.equals(200, post(base, id, token, f, "replayed-key"))
    assert.equals(200, post(base, id, token, f))
    f.MessageStatus = "sent"
    assert.equals(200, post(base, id, token, f, "another-key"))
    assert.same(row, send_row(srv, id))
    assert.equals(2, receipts_n(srv, id, 2))
  end)

  it("keeps delivered when the callbacks come out of order, and keeps the error code", function()
    H.async(function() sim.control("POST", "settings", { callback_order = "reversed" }) end)
    assert.is_falsy(sms(srv, acme, "receipts: reversed").isError)
    local id = split(last_callback(sim))
    local row = wait_delivery(srv, id, "delivered")
    H.wait_for(function()
      local cbs = H.async(function() return select(2, sim.control("GET", "callbacks")).callbacks end)
      for _, c in ipairs(cbs) do if c.sid == row.sid and c.status == "sent" and c.http_status == 200 then return true end end
      return false
    end, 10, "the late sent callback")
    row = send_row(srv, id)
    assert.equals("delivered", row.delivery_status)
    assert.equals(1, receipts_n(srv, id, 1))
    -- an error code is kept through a later step without one
    assert.is_falsy(sms(srv, acme, "receipts: undelivered").isError)
    local id2, token = split(last_callback(sim))
    local r2 = wait_delivery(srv, id2, "delivered")
    TW.sql(srv, ("UPDATE sends SET delivery_status = 'sent', delivered_at = NULL WHERE id = %d"):format(id2))
    assert.equals(200, post(base, id2, token, { MessageSid = r2.sid, MessageStatus = "undelivered", ErrorCode = "30005" }))
    assert.equals(200, post(base, id2, token, { MessageSid = r2.sid, MessageStatus = "delivered" }))
    r2 = send_row(srv, id2)
    assert.equals("undelivered", r2.delivery_status)
    assert.equals(30005, r2.delivery_error)
    assert.equals(200, post(base, id2, token, { MessageSid = r2.sid, MessageStatus = "read" }))
    assert.equals("undelivered", send_row(srv, id2).delivery_status)
  end)

  it("resolves an unknown outcome at once from the callback", function()
    H.async(function()
      sim.faults({ { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "drop", process = true } })
      sim.control("POST", "settings", { callback_delay_ms = 300 })
    end)
    local r = sms(srv, acme, "receipts: unknown")
    local answered = tonumber((H.sh("date +%s.%N")))
    assert.is_true(r.isError)
    assert.truthy(r.text:lower():find("unknown", 1, true), r.text)
    local id = split(last_callback(sim))
    local resolved
    H.wait_for(function()
      local row = send_row(srv, id)
      if row.status == "sent" then resolved = tonumber((H.sh("date +%s.%N"))) return true end
      return false
    end, 5, "the unknown send to be resolved")
    assert.is_true(resolved - answered < 1, ("resolved after %.3f s"):format(resolved - answered))
    local row = send_row(srv, id)
    assert.truthy(row.sid:match("^SM%x+$"))
    assert.equals("reconciled by a status callback", row.error_message)
    local found
    H.wait_for(function()
      for _, a in ipairs(TW.audit(srv)) do
        if a.decision == "recovery" and type(a.detail) == "table" and a.detail.send_id == id
          and a.detail.reconciled == "status callback" then found = a end
      end
      return found ~= nil
    end, 10, "the audit record of the resolution")
    assert.equals("sent", found.outcome)
  end)
end)

describe("without a public URL", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "plain")
  end)
  teardown(function() srv.stop() sim.stop() end)

  it("sends carry no StatusCallback", function()
    local r = sms(srv, token, "no receipts")
    assert.is_falsy(r.isError, r.text)
    local reqs = H.async(function() return sim.requests(0) end)
    local form
    for _, q in ipairs(reqs) do if q.method == "POST" and q.path:find("/Messages.json", 1, true) then form = q.form end end
    assert.truthy(form)
    assert.is_nil(form.StatusCallback)
    local row = TW.sends(srv)[1]
    assert.equals("sent", row.status)
  end)
end)
