-- The operator's long lists on a real server: executions, settings
-- changes and escalations answer one page and a cursor that yields the
-- rest exactly once, also while rows are added between pages; the CLI
-- follows the pages for people and --json prints one. audit verify
-- yields to the loop: agents' pings are answered while it runs, one runs
-- at a time, and it reports its progress.
local H = require("helpers")
local json = require("switchboard.json")
local loop = require("core.loop")
local audit = require("switchboard.audit")
local db_mod = require("switchboard.db")
local vault = require("core.vault")

local function sql(srv, q)
  local out, code = H.sql(srv, q)
  assert(code == 0, "sql: " .. out)
  return (out:gsub("%s+$", ""))
end

-- Calls of example_clock, each with its execution id (agent-chosen).
local function calls(srv, token, ids)
  H.async(function()
    local c = assert(H.client(srv.agent_socket))
    assert(c:initialize(token).result)
    for _, id in ipairs(ids) do
      local r = c:call("example_clock", {}, { ["io.switchboard/execution"] = id })
      assert(r and r.result, "the call failed")
    end
    c:close()
  end, 60)
end

-- Follow the pages of `cmd` with --json, calling between(n) after page n;
-- returns every item (key of the answer) and the pages.
local function pages(srv, cmd, key, between)
  local items, n, after = {}, 0, nil
  repeat
    local r, code, err = srv.admin(cmd .. (after and (" --after " .. H.q(after)) or ""))
    assert.equal(0, code, err)
    n = n + 1
    assert.is_true(n < 100, "the pages do not end")
    for _, x in ipairs(r[key]) do items[#items + 1] = x end
    after = r.next ~= json.null and r.next or nil
    if after then assert.is_string(after) end
    if between then between(n) end
  until not after
  return items, n
end

describe("operator pages", function()
  local srv, t1, t2
  setup(function()
    srv = H.server()
    t1 = srv.agent("pages", "a1", "caioo", "Examples")
    t2 = srv.agent("pages", "a2", "caioo", "Examples")
    -- 30 executions of a1, 5 of a2 with ids a1 chose too, and one of a1
    -- whose calls are spread over the whole history
    local ids = {}
    for i = 1, 30 do
      ids[#ids + 1] = "run-" .. i
      if i % 10 == 1 then ids[#ids + 1] = "long" end
    end
    calls(srv, t1, ids)
    calls(srv, t2, { "run-1", "run-2", "run-3", "run-4", "run-5" })
  end)
  teardown(function() srv.stop() end)

  local function key(e) return e.agent .. "/" .. e.id end

  it("lists executions one page at a time, each exactly once while calls are added between pages", function()
    local first = srv.admin("executions --tenant pages --limit 7")
    assert.equal(7, #first.executions)
    assert.is_string(first.next)
    assert.equal("a2/run-5", key(first.executions[1]))    -- newest first
    local added = 0
    local items, n = pages(srv, "executions --tenant pages --limit 7", "executions", function(page)
      if page == 2 or page == 4 then
        -- a new execution, and new calls of executions on pages already shown and still to come
        added = added + 1
        calls(srv, t1, { "new-" .. page, "run-3", "long", "run-29" })
      end
    end)
    assert.is_true(n >= 6)
    assert.equal(2, added)
    local seen = {}
    for _, e in ipairs(items) do
      assert.is_nil(seen[key(e)], key(e) .. " was listed twice")
      seen[key(e)] = true
      assert.truthy(#e.calls >= 1)
    end
    -- every execution that existed when the first page was asked, and no other
    local expect = { ["a1/long"] = true }
    for i = 1, 30 do expect["a1/run-" .. i] = true end
    for i = 1, 5 do expect["a2/run-" .. i] = true end
    assert.same(expect, seen)
    local long
    for _, e in ipairs(items) do if key(e) == "a1/long" then long = e end end
    assert.equal(3, #long.calls)                           -- as it was when the listing began
    -- a new listing starts with what was added
    local again = srv.admin("executions --tenant pages --limit 3")
    assert.same({ "a1/run-29", "a1/long", "a1/run-3" }, { key(again.executions[1]), key(again.executions[2]),
      key(again.executions[3]) })
  end)

  it("follows the pages for people and prints one page with its cursor for --json", function()
    local text, code = srv.admin_text("executions --tenant pages --limit 4")
    assert.equal(0, code, text)
    for i = 1, 30 do
      local _, count = text:gsub("\nrun%-" .. i .. "  agent a1 ", "")
      if text:find("^run%-" .. i .. "  agent a1 ") then count = count + 1 end
      assert.equal(1, count, "run-" .. i .. " in:\n" .. text)
    end
    local _, a2 = text:gsub("run%-%d+  agent a2 ", "")
    assert.equal(5, a2)
    local one = srv.admin("executions --tenant pages --limit 4")
    assert.equal(4, #one.executions)
    assert.is_string(one.next)
  end)

  it("pages the calls of one execution oldest first, and refuses an id two agents chose without --agent", function()
    local items, n = pages(srv, "execution show run-1 --tenant pages --agent a1 --limit 1", "calls")
    assert.equal(1, #items)
    assert.equal(1, n)
    local long = pages(srv, "execution show long --tenant pages --limit 2", "calls")
    local count = tonumber(sql(srv, "SELECT count(*) FROM audit_log WHERE kind = 'call' AND execution_id = 'long'"))
    assert.equal(count, #long)
    for i = 2, #long do assert.truthy(long[i].id > long[i - 1].id) end
    local text = srv.admin_text("execution show long --tenant pages --limit 2")
    local _, heads = text:gsub("execution long %(tenant pages", "")
    local _, shown = text:gsub("\n#%d+ ", "")
    assert.equal(1, heads)
    assert.equal(count, shown)
    local _, code, err = srv.admin("execution show run-2 --tenant pages")
    assert.equal(1, code)
    assert.truthy(err:find("several agents (a1, a2)", 1, true), err)
  end)

  it("refuses a cursor that is not one of the list's, and a page size out of range", function()
    for _, args in ipairs({ "executions --tenant pages --after bogus", "executions --tenant pages --after st1-5",
                            "audit settings --tenant pages --after ex1-1-2-3",
                            "escalations --tenant pages --after es1--1", "executions --tenant pages --limit 0",
                            "audit settings --tenant pages --limit 501" }) do
      local _, code, err = srv.admin(args)
      assert.equal(1, code, args)
      assert.truthy(err:find("--after", 1, true) or err:find("--limit", 1, true), err)
    end
  end)

  it("pages settings changes newest first, each exactly once while changes are made between pages", function()
    for i = 1, 12 do srv.admin("tenant features pages +f" .. i) end
    local total = tonumber(sql(srv, "SELECT count(*) FROM audit_log WHERE kind = 'setting' AND tenant_id ="
      .. " (SELECT id FROM tenants WHERE name = 'pages')"))
    assert.truthy(total >= 14)
    local items = pages(srv, "audit settings --tenant pages --limit 5", "changes", function(page)
      if page <= 2 then srv.admin("tenant features pages +late" .. page) end
    end)
    assert.equal(total, #items)
    local seen, last = {}, math.huge
    for _, x in ipairs(items) do
      assert.is_nil(seen[x.id])
      seen[x.id] = true
      assert.truthy(x.id < last)
      last = x.id
    end
    assert.same({ "f12" }, items[1].new and { items[1].new[#items[1].new] } or {})
    local text = srv.admin_text("audit settings --tenant pages --limit 3")
    local _, heads = text:gsub("ID%s+TIME%s+WHO", "")
    assert.equal(1, heads)                                  -- one table, page after page
    assert.truthy(text:find("late2", 1, true), text)
    assert.truthy(text:find('"f1"', 1, true), text)
  end)

  it("pages escalations, each exactly once while escalations are opened between pages", function()
    local tid = sql(srv, "SELECT id FROM tenants WHERE name = 'pages'")
    local aid = sql(srv, "SELECT id FROM agents WHERE name = 'a1'")
    local function open_one(i)
      sql(srv, ("INSERT INTO escalations (tenant_id, agent_id, sender_tier, tool, arguments, kind, reason, policy,"
        .. " status, created_at) VALUES (%s, %s, 'owner', 'example_clock', %s, 'hold', 'reason %d', 'p', '%s',"
        .. " '2026-12-01T00:00:00Z')"):format(tid, aid, H.blob_sql(srv, "00"), i,
        i % 3 == 0 and "rejected" or "open"))
    end
    for i = 1, 13 do open_one(i) end
    local all = pages(srv, "escalations --tenant pages --status all --limit 4", "escalations", function(page)
      if page == 1 then open_one(100) end
    end)
    assert.equal(13, #all)
    local seen = {}
    for _, e in ipairs(all) do
      assert.is_nil(seen[e.id])
      seen[e.id] = true
    end
    local open = pages(srv, "escalations --tenant pages --limit 3", "escalations")
    assert.equal(10, #open)                                  -- 9 of the first 13, and the one added
    for _, e in ipairs(open) do assert.equal("open", e.status) end
    local text = srv.admin_text("escalations --tenant pages --status all --limit 5")
    local _, n = text:gsub("reason %d+", "")
    assert.equal(14, n)
  end)
end)

-- the trail is written into the SQLite file before the server starts
local describe_sqlite = H.STORE == "pg"
  and function(name) describe(name, function() pending("SQLite only: the trail is written into the file") end) end
  or describe

describe_sqlite("audit verify on a long trail", function()
  local srv, RECORDS = nil, 20000

  setup(function()
    srv = H.server({ start = false })
    -- a trail written by the server's own writer code, before it starts
    assert(os.execute("mkdir -m 700 -p " .. H.q(srv.dir .. "/data")))
    assert(vault.create_master(srv.cfg.master_key_file))
    local master = assert(vault.load_master(srv.cfg.master_key_file))
    local db = assert(db_mod.open(srv.dir .. "/data/switchboard.db"))
    local w = audit.new(db, master, { flush_ms = 1000, anchor_file = srv.dir .. "/data/audit.head" })
    for i = 1, RECORDS do
      w:record({ tenant_id = 1, agent_id = 1, execution_id = "bulk", sender_tier = "owner", tool = "t",
                 args = { n = i }, decision = "allow", policies = {}, outcome = "ok", duration_ms = 1 })
      if i % 2000 == 0 then assert(w:flush()) end
    end
    assert(w:flush())
    db:close()
    master:close()
    assert(os.execute("chmod 600 " .. H.q(srv.dir) .. "/data/*"))
    srv.start()
  end)
  teardown(function() srv.stop() end)

  it("answers agents' pings while it runs, refuses a second one meanwhile, and streams its progress", function()
    local events, second, answer = {}, nil, nil
    H.async(function()
      local verifying = true
      loop.spawn(function()
        local c = assert(H.client(srv.agent_socket))
        while verifying do
          local r = c:request("ping", {})
          assert(r and r.result, "a ping was not answered")
          events[#events + 1] = "ping"
        end
        c:close()
      end)
      local s = assert(loop.connect(srv.admin_socket))
      s:write(json.encode({ jsonrpc = "2.0", id = 1, method = "audit.verify",
                            params = { full = true, progress = true } }) .. "\n")
      while true do
        local line = assert(s:read_line(1048576, 60))
        local msg = json.decode(line)
        if msg.id == 1 then answer = msg break end
        assert.equal("audit.verify/progress", msg.method)
        events[#events + 1] = "progress"
        if not second then
          local s2 = assert(loop.connect(srv.admin_socket))
          s2:write(json.encode({ jsonrpc = "2.0", id = 2, method = "audit.verify", params = {} }) .. "\n")
          second = json.decode(assert(s2:read_line(1048576, 60)))
          s2:close()
        end
        msg.params.total = msg.params.total or 0
        assert.truthy(msg.params.checked <= msg.params.total)
      end
      verifying = false
      s:close()
      loop.sleep(0.05)
    end, 120)
    assert.is_true(answer.result.ok, answer.result.problem)
    assert.truthy(answer.result.records >= RECORDS)
    assert.truthy(second.error and second.error.message:find("running already", 1, true), json.encode(second))
    -- pings were answered between the progress reports, not only before or after the walk
    local first_p, last_p
    for i, e in ipairs(events) do
      if e == "progress" then first_p, last_p = first_p or i, i end
    end
    local during = 0
    for i = first_p, last_p do if events[i] == "ping" then during = during + 1 end end
    assert.truthy(during >= 1, table.concat(events, " "))
  end)

  it("walks only the records since the last verify, and all of them with --full", function()
    assert.is_true(srv.admin("audit verify --full").ok)
    srv.admin("tenant add later")
    local v = srv.admin("audit verify")
    assert.is_true(v.ok, v.problem)
    assert.truthy(v.from >= RECORDS)
    assert.truthy(v.checked >= 1 and v.checked <= 3, tostring(v.checked))
    local full = srv.admin("audit verify --full")
    assert.equal(full.records, full.checked)
    local text = srv.admin_text("audit verify")
    assert.truthy(text:find("checked since the last verify", 1, true), text)
  end)

  it("shows records checked of total, the rate and the time left on a terminal", function()
    local out, code = H.sh(("script -qec %s /dev/null"):format(H.q(("%s admin --config %s audit verify --full")
      :format(H.q(H.BIN), H.q(srv.conf)))))
    assert.equal(0, code, out)
    assert.truthy(out:find("verifying: %d+ of %d+ records %(%d+%%%), %d+ records/s, [%d?]+ s left"), out)
    assert.truthy(out:find("audit trail intact", 1, true), out)
    -- not on a pipe
    local piped = srv.admin_text("audit verify --full")
    assert.falsy(piped:find("verifying:", 1, true), piped)
  end)
end)

describe("twilio messages pages", function()
  local TW = require("twilio_env")
  local sim, srv
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    TW.connect_sim(srv, sim, "clinic")
  end)
  teardown(function() srv.stop() sim.stop() end)

  it("answers one page and Twilio's next-page link as the cursor; the CLI follows them", function()
    local everything = srv.admin("twilio messages --tenant clinic --limit 100")
    assert.equal(json.null, everything.next)
    local total = #everything.messages
    assert.truthy(total >= 5)
    local items, n = pages(srv, "twilio messages --tenant clinic --limit 2", "messages")
    assert.equal(total, #items)
    assert.equal((total + 1) // 2, n)
    local seen = {}
    for i, m in ipairs(items) do
      assert.is_nil(seen[m.sid])
      seen[m.sid] = true
      assert.equal(everything.messages[i].sid, m.sid)
    end
    local text, code = srv.admin_text("twilio messages --tenant clinic --limit 2")
    assert.equal(0, code, text)
    local _, lines = text:gsub("\n", "")
    assert.equal(total + 1, lines)                         -- one header, every message
  end)

  it("follows a cursor only to the account's message list on the Twilio host", function()
    local acct = TW.SIM.ACCOUNT
    for _, after in ipairs({ "http://127.0.0.1:1/2010-04-01/Accounts/" .. acct .. "/Messages.json?Page=1",
                             "/2010-04-01/Accounts/" .. acct .. "/Calls.json?Page=1",
                             "/2010-04-01/Accounts/ACffffffffffffffffffffffffffffffff/Messages.json" }) do
      local _, code, err = srv.admin("twilio messages --tenant clinic --after " .. H.q(after))
      assert.equal(1, code, after)
      assert.truthy(err:find("cursor", 1, true) or err:find("not followed", 1, true), err)
    end
  end)
end)
