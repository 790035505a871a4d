-- Several runtimes on one PostgreSQL (two nodes, one database, one master
-- key): a recipient limit holds across both when the sends arrive at both
-- at once; an escalation approved on both nodes at the same instant sends
-- once; a token revoked on one node closes that agent's live connection on
-- the other; a tool group removed on one node sends list_changed on the
-- other; the audit chain that both append to verifies from either.
-- store: pg only (run in tests/run.sh's PostgreSQL pass, SB_STORE=pg)
local H = require("helpers")
local TW = require("twilio_env")
local loop = require("core.loop")
local json = require("switchboard.json")

if H.STORE ~= "pg" then
  describe("several runtimes on one PostgreSQL", function()
    pending("runs on PostgreSQL only: SB_STORE=pg (tests/run.sh's PostgreSQL pass)")
  end)
  return
end

local ANA = TW.SIM.ANA

-- Two nodes on one new database; the second uses the first's master key.
local function two_nodes(config)
  local store = H.pg_store("cluster")
  local function cfg(extra)
    local c = { store = store }
    for k, v in pairs(config or {}) do c[k] = v end
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end
  local a = TW.server({ config = cfg() })
  local b = TW.server({ config = cfg({ master_key_file = a.cfg.master_key_file, create_master_key = false }) })
  return a, b
end

local function sim_messages(sim)
  return H.async(function()
    local _, body = sim.control("GET", "messages")
    return body.messages
  end)
end

-- Run fns (each given its node) at once, each in a coroutine of its own
-- with a session of its own; returns their results in order.
local function at_once(jobs)
  return H.async(function()
    local out, done, me = {}, 0, coroutine.running()
    for i, job in ipairs(jobs) do
      loop.spawn(function()
        local ok, res = pcall(job)
        out[i] = ok and res or { error = tostring(res) }
        done = done + 1
        if done == #jobs then loop.wake(me) end
      end)
    end
    if done < #jobs then loop.wait() end
    return out
  end, 60)
end

describe("two nodes on one PostgreSQL", function()
  local sim, a, b, token
  setup(function()
    sim = TW.sim()
    a, b = two_nodes({ policy_settings = { recipients = { per_recipient = 3, daily_budget = 100000 } } })
    token = TW.connect_sim(a, sim, "acme")
  end)
  teardown(function()
    if a then a.stop() end
    if b then b.stop() end
    sim.stop()
  end)

  it("send exactly 3 of 4 concurrent sends to one recipient with a limit of 3, two at each node", function()
    local before = #sim_messages(sim)
    -- the sessions first, then the four calls in the same loop turn
    local res = H.async(function()
      local nodes, cs = { a, b, a, b }, {}
      for i, node in ipairs(nodes) do cs[i] = TW.session(node, token) end
      local out, done, me = {}, 0, coroutine.running()
      for i, c in ipairs(cs) do
        loop.spawn(function()
          local ok, r = pcall(TW.call, c, "twilio_send_sms", { to = ANA, body = "limit " .. i }, 30)
          out[i] = ok and r or { error = tostring(r) }
          c:close()
          done = done + 1
          if done == #cs then loop.wake(me) end
        end)
      end
      if done < #cs then loop.wait() end
      return out
    end, 60)
    local sent, refused = 0, 0
    for _, r in ipairs(res) do
      if r.data and r.data.outcome == "sent" then
        sent = sent + 1
      elseif r.isError and r.text:find("Refused by policy", 1, true) then
        refused = refused + 1
      end
    end
    assert.equal(3, sent, json.encode(res))
    assert.equal(1, refused, json.encode(res))
    local to_ana = 0
    for i = before + 1, #sim_messages(sim) do
      if sim_messages(sim)[i].to == ANA then to_ana = to_ana + 1 end
    end
    assert.equal(3, to_ana)
    local rows = H.sql_rows(a, "SELECT status FROM sends WHERE recipient = '" .. ANA .. "' AND status <> 'failed'")
    assert.equal(3, #rows)
  end)

  it("closes an agent's live connection on the other node when its token is revoked", function()
    local r = a.admin("agent add --tenant acme --name helper --type caioo --tier owner --groups "
      .. H.q(TW.GROUP))
    assert.is_table(r)
    local closed = H.async(function()
      local c = TW.session(b, r.token)
      local _, code = a.admin("agent revoke helper --tenant acme")
      assert.equal(0, code)
      -- the connection on b ends: a read comes back with nothing
      local deadline = loop.time() + 10
      while loop.time() < deadline do
        local m, err = c:recv(1)
        if not m and err ~= "timeout" then return true end
      end
      return false
    end, 30)
    assert.is_true(closed, "the revoked agent's connection on the other node stayed open")
    -- and a new connection there is refused
    local refused = H.async(function()
      local c = assert(H.client(b.agent_socket))
      local init = c:initialize(r.token)
      c:close()
      return init == nil or init.error ~= nil
    end)
    assert.is_true(refused)
  end)

  it("sends tools/list_changed on the other node when the tenant's tool group is removed", function()
    local r = a.admin("agent add --tenant acme --name watcher --type caioo --tier owner --groups "
      .. H.q(TW.GROUP .. ",Examples"))
    assert.is_table(r)
    local got = H.async(function()
      local c = TW.session(b, r.token)
      local _, code, err = a.admin("agent groups watcher --tenant acme " .. H.q("-" .. TW.GROUP))
      assert.equal(0, code, err)
      local deadline = loop.time() + 10
      while loop.time() < deadline do
        local m = c:recv(1)
        if m and m.method == "notifications/tools/list_changed" then c:close() return true end
      end
      c:close()
      return false
    end, 30)
    assert.is_true(got, "no list_changed on the other node")
  end)

  it("verifies one audit chain that both nodes appended to, from either node", function()
    local function send(node, body)
      return function()
        local c = TW.session(node, token)
        TW.call(c, "twilio_send_sms", { to = TW.SIM.OTHER, body = body })
        c:close()
        return true
      end
    end
    local res = at_once({ send(a, "x1"), send(b, "x2"), send(a, "x3"), send(b, "x4") })
    assert.same({ true, true, true, true }, res)
    for _, node in ipairs({ a, b }) do
      local v, code = node.admin("audit verify --full")
      assert.equal(0, code, json.encode(v))
      assert.is_true(v.ok, v.problem)
    end
  end)
end)

describe("two nodes approving one escalation at the same instant", function()
  local sim, a, b
  setup(function()
    sim = TW.sim()
    a, b = two_nodes()
    TW.connect_sim(a, sim, "appr", nil, { sends = false })
  end)
  teardown(function()
    if a then a.stop() end
    if b then b.stop() end
    sim.stop()
  end)

  it("sends once", function()
    local tok = a.admin("agent add --tenant appr --name asker --type caioo --tier owner --groups " .. H.q(TW.GROUP))
    local r = TW.with(b, tok.token, function(c)
      return TW.call(c, "twilio_send_sms", { to = ANA, body = "approve me" })
    end)
    local id = math.tointeger(assert(r.data and r.data.escalation_id, r.text))
    local before = #sim_messages(sim)
    -- both approvals start together, one at each node
    local cmd = "%s admin --config %s --json escalation approve %d --tenant appr >%s 2>&1"
    H.sh(("(%s) & (%s) & wait"):format(
      cmd:format(H.q(H.BIN), H.q(a.conf), id, H.q(a.dir .. "/approve.out")),
      cmd:format(H.q(H.BIN), H.q(b.conf), id, H.q(b.dir .. "/approve.out"))))
    local outs = { H.read(a.dir .. "/approve.out") or "", H.read(b.dir .. "/approve.out") or "" }
    local approved = 0
    for _, o in ipairs(outs) do
      local v = json.decode(o)
      if type(v) == "table" and v.status == "approved" then approved = approved + 1 end
    end
    assert.equal(1, approved, table.concat(outs, "\n"))
    local msgs = sim_messages(sim)
    assert.equal(before + 1, #msgs)
    assert.equal(1, #H.sql_rows(a, "SELECT id FROM sends WHERE escalation_id = " .. id))
  end)
end)

describe("two nodes, one killed with 200 sends in flight", function()
  local sim, a, b
  setup(function()
    sim = TW.sim()
    a, b = two_nodes({ limits = { connections = 600, connections_per_uid = 600 }, audit = { flush_ms = 20 } })
  end)
  teardown(function()
    if a then a.stop() end
    if b then b.stop() end
    sim.stop()
  end)

  it("leaves the other to take over and reconcile them: 0 duplicates, 0 lost, every send audited, the trail intact",
    function()
    local SENDS = 200
    local token = TW.connect_sim(a, sim, "crash")
    local POST = { method = "POST", path_pattern = "/Messages%.json$" }
    -- a third answered quickly, the rest held by Twilio past the kill (and still carried out)
    H.async(function()
      sim.control("DELETE", "faults")
      sim.faults({ { match = POST, action = "delay", delay_ms = 50, count = SENDS // 3 },
                   { match = POST, action = "delay", delay_ms = 2500, count = 100000 } })
    end)
    local first = H.async(function() return sim.last() end)
    local results = {}
    H.async(function()
      local done, me = 0, coroutine.running()
      for i = 1, SENDS do
        loop.spawn(function()
          local c = H.client(a.agent_socket)
          if c then
            local r = c:initialize(token)
            if r and r.result then
              results[#results + 1] = c:call("twilio_send_sms", { to = ("+1415555%04d"):format(i), body = "kill " .. i })
            end
            c:close()
          end
          done = done + 1
          if done == SENDS then loop.wake(me) end
        end)
      end
      local deadline = loop.time() + 20
      while loop.time() < deadline do
        local posts = 0
        for _, r in ipairs(sim.requests(first)) do if r.method == "POST" then posts = posts + 1 end end
        -- kill once half the sends reached Twilio: the held ones are in flight
        if posts >= SENDS // 2 then break end
        loop.sleep(0.05)
      end
      a.signal("KILL")
      if done < SENDS then loop.wait() end
    end, 90)
    H.wait_for(function() return not a.alive() end, 10, "the kill")
    a.pid = nil
    -- what the killed node left open (before the other takes it over)
    local open_at_kill = #H.sql_rows(b, "SELECT id FROM sends WHERE status IN ('pending', 'in_flight')")
    print(("%d sends answered, %d records open at the kill"):format(#results, open_at_kill))
    assert.truthy(open_at_kill > 0, "the kill came when no send was in flight")
    H.async(function() sim.control("DELETE", "faults") end)
    -- b takes over once a's lease expired (3 s) and reconciles with Twilio
    local function settled()
      for _, r in ipairs(TW.sends(b)) do
        if r.status == "pending" or r.status == "in_flight" then return false end
      end
      return true
    end
    H.wait_for(settled, 60, "the other node to take over")
    -- and to reconcile: every message Twilio has, its record sent
    H.wait_for(function()
      local sent = {}
      for _, r in ipairs(TW.sends(b)) do if r.status == "sent" and type(r.sid) == "string" then sent[r.sid] = true end end
      for _, m in ipairs(sim_messages(sim)) do if not sent[m.sid] then return false end end
      return true
    end, 60, "the other node to reconcile every message with Twilio")
    local rows = TW.sends(b)
    local msgs = sim_messages(sim)
    -- 0 duplicates: each message once at Twilio, claimed by at most one record
    local bodies, sids = {}, {}
    for _, m in ipairs(msgs) do
      assert.is_nil(bodies[m.body], "sent twice: " .. tostring(m.body))
      bodies[m.body] = true
      sids[m.sid] = m
    end
    local claimed = {}
    for _, r in ipairs(rows) do
      if type(r.sid) == "string" then
        assert.is_nil(claimed[r.sid], "two records claim " .. r.sid)
        claimed[r.sid] = true
      end
    end
    -- 0 lost: every message Twilio has is a sent record
    for sid in pairs(sids) do assert.truthy(claimed[sid], "a message without its sent record: " .. sid) end
    -- every send record is in the audit trail
    local audited = {}
    for _, r in ipairs(H.sql_rows(b, "SELECT detail FROM audit_log WHERE kind = 'call' AND detail IS NOT NULL")) do
      local d = json.decode(r.detail)
      if type(d) == "table" and d.send_id then audited[math.tointeger(d.send_id)] = true end
    end
    for _, r in ipairs(rows) do assert.truthy(audited[r.id], "send " .. r.id .. " has no audit record") end
    local v, code = b.admin("audit verify --full")
    assert.equal(0, code, json.encode(v))
    assert.is_true(v.ok, v.problem)
  end)
end)

describe("PostgreSQL stopped during sends", function()
  local pgs, sim, srv, token
  setup(function()
    -- a server of its own: this one is stopped and started again
    pgs = require("support.postgres").start()
    sim = TW.sim()
    srv = TW.server({ config = { store = pgs:store_config(pgs:create_database("down")) } })
    token = TW.connect_sim(srv, sim, "down")
  end)
  teardown(function()
    if srv then srv.stop() end
    sim.stop()
    pgs:stop()
  end)

  it("answers every call with a clear error, sends nothing without its record, and serves again once it is back",
    function()
    local pid = srv.pid
    local c = H.async(function() return TW.session(srv, token) end)
    local function send(body)
      return H.async(function() return TW.call(c, "twilio_send_sms", { to = ANA, body = body }, 30) end, 40)
    end
    assert.equal("sent", send("before").data.outcome)
    local before = #sim_messages(sim)
    pgs:halt("fast")
    for i = 1, 5 do
      local r = send("while down " .. i)
      assert.is_true(r.isError, r.text)
      assert.truthy(r.text:find("storage unavailable", 1, true) or r.text:find("could not be read", 1, true), r.text)
    end
    assert.equal(before, #sim_messages(sim), "a message went out while its record could not be stored")
    pgs:resume()
    -- the same process serves again: the pool opens new connections
    local r
    H.wait_for(function()
      r = send("after")
      return not r.isError
    end, 30, "the node to serve again")
    assert.equal("sent", r.data.outcome, r.text)
    assert.equal(pid, srv.pid)
    assert.is_true(srv.alive())
    H.async(function() c:close() end)
    -- every message Twilio has is a sent record
    local sent = {}
    for _, row in ipairs(TW.sends(srv)) do if row.sid then sent[row.sid] = true end end
    for _, m in ipairs(sim_messages(sim)) do assert.truthy(sent[m.sid], "no record for " .. m.sid) end
  end)
end)
