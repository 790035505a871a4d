-- The send path in one process, on a real SQLite file: every query a
-- tools/call or a policy runs is bounded by an index on its window (its
-- query plan, from SQLite); the writer's group commit (one commit for the
-- statements queued together, the next batch for those queued during a
-- commit, one statement's error failing only it, never nesting in an open
-- transaction); the daily count kept in memory matches the records,
-- through failures and a new process.
local H = require("helpers")
local loop = require("core.loop")
local vault = require("core.vault")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")
local sends = require("switchboard.sends")
local connections = require("switchboard.connections")
local connection_repo = require("switchboard.store.connections")

local function open_db(dir)
  return assert(db_mod.open(dir .. "/sb.db"))
end

-- A db that records the SQL text of each statement it is given.
local function recording(db)
  local seen = {}
  local proxy = setmetatable({}, { __index = function(_, name)
    return function(_, sql, ...)
      if type(sql) == "string" then seen[#seen + 1] = sql end
      return db[name](db, sql, ...)
    end
  end })
  return proxy, seen
end

-- The query plan of sql, one line per step ("SEARCH sends USING …").
local function plan(db, sql)
  local n = select(2, sql:gsub("%?", "?"))
  local rows = assert(db:query("EXPLAIN QUERY PLAN " .. sql, table.unpack({}, 1, n)))
  local out = {}
  for i, r in ipairs(rows) do out[i] = r.detail end
  return table.concat(out, "\n")
end

describe("the call path's queries", function()
  local dir, db, tenant

  setup(function()
    dir = H.tmpdir("plan")
    db = open_db(dir)
    local master_path = dir .. "/master.key"
    assert(vault.create_master(master_path))
    local master = assert(vault.load_master(master_path))
    tenant = assert(directory.add_tenant(db, master, "plan"))
    master:close()
  end)
  teardown(function() db:close() end)

  -- Each statement the call path runs, with what its plan must constrain.
  local function statements()
    local list = {}
    local function add(sql, must) list[#list + 1] = { sql = sql, must = must } end
    add(sends.SQL.recent, "tenant_id=? AND recipient=? AND created_unix>?")
    add(sends.SQL.today, "tenant_id=? AND created_unix>?")
    add(sends.SQL.opted_out, "tenant_id=? AND recipient=?")
    add(sends.SQL.settle, "rowid=?")
    add(sends.SQL.by_sid, "sid=?")
    add(connection_repo.SQL.get, "tenant_id=? AND integration=?")
    -- and what the modules send on their own, recorded as they run
    local rec, seen = recording(db)
    local helpers = sends.policy_helpers(rec, tenant.id)
    helpers.recent_sends("+14155550100", 600)
    helpers.sends_today()
    helpers.opted_out("+14155550100")
    connections.for_call(rec, "twilio", tenant.id)
    directory.authenticate(rec, "sbt_" .. string.rep("x", 43))
    directory.tenant_groups(rec, tenant.id)
    directory.tenant_by_id(rec, tenant.id)
    for _, sql in ipairs(seen) do add(sql, nil) end
    return list, #seen
  end

  it("each use an index on their window: no scan of sends, audit_log or any other table", function()
    local list, recorded = statements()
    assert.truthy(recorded >= 7, "the call path's statements were not recorded")
    for _, s in ipairs(list) do
      local p = plan(db, s.sql)
      for line in p:gmatch("[^\n]+") do
        assert.is_nil(line:match("^SCAN ") and not line:match("^SCAN CONSTANT ROW"),
          ("%s\n  scans: %s"):format(s.sql, p))
      end
      if s.must then
        assert.truthy(p:find(s.must, 1, true), ("%s\n  does not range on %s: %s"):format(s.sql, s.must, p))
      end
    end
  end)

  it("count the day's sends through the index on the tenant's creation times", function()
    assert.truthy(plan(db, sends.SQL.today):find("USING INDEX sends_tenant_created", 1, true))
  end)
end)

describe("the writer", function()
  local dir, db

  setup(function()
    dir = H.tmpdir("writer")
    db = open_db(dir)
    assert(db:exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"))
  end)
  teardown(function() db:close() end)

  it("commits the statements queued together in one transaction, and those queued meanwhile in the next", function()
    local w = db_mod.writer(db)
    local b0 = w.batches
    local ids, late = {}, nil
    H.async(function()
      local me, done = coroutine.running(), 0
      for i = 1, 16 do
        loop.spawn(function()
          ids[i] = w:insert(function(id)
            -- queued during the first batch's commit: goes in the next
            if i == 1 and id then
              w:later(function(n) late = n end, "INSERT INTO t (v) VALUES (?)", "late")
            end
          end, "INSERT INTO t (v) VALUES (?)", "v" .. i)
          done = done + 1
          if done == 16 then loop.wake(me) end
        end)
      end
      loop.wait()
      loop.sleep(0.05)
    end)
    for i = 1, 16 do assert.equal("integer", math.type(ids[i])) end
    assert.equal(1, late)
    assert.equal(b0 + 2, w.batches)
    assert.equal(17, tonumber(db:row("SELECT count(*) AS n FROM t").n))
  end)

  it("fails only the statement that fails", function()
    local w = db_mod.writer(db)
    local a, b, berr
    H.async(function()
      local me, done = coroutine.running(), 0
      loop.spawn(function()
        a = w:insert(nil, "INSERT INTO t (v) VALUES (?)", "fresh")
        done = done + 1
        if done == 2 then loop.wake(me) end
      end)
      loop.spawn(function()
        b, berr = w:insert(nil, "INSERT INTO t (v) VALUES (?)", "v1") -- a duplicate
        done = done + 1
        if done == 2 then loop.wake(me) end
      end)
      loop.wait()
    end)
    assert.equal("integer", math.type(a))
    assert.is_nil(b)
    assert.truthy(tostring(berr):find("UNIQUE", 1, true), berr)
    assert.truthy(db:row("SELECT id FROM t WHERE v = 'fresh'"))
  end)

  it("fails a statement alone in its batch (no savepoint then) with its own error, writing nothing, and goes on", function()
    local w = db_mod.writer(db)
    local b0 = w.batches
    local bad, err, good, calls
    H.async(function()
      bad, err = w:insert(function(id, cerr) calls = { id, cerr } end, "INSERT INTO t (v) VALUES (?)", "v2")
      good = w:insert(nil, "INSERT INTO t (v) VALUES (?)", "alone")
    end)
    assert.is_nil(bad)
    assert.truthy(tostring(err):find("UNIQUE", 1, true), err)
    assert.is_nil(calls[1])
    assert.equal(err, calls[2])
    assert.equal("integer", math.type(good))
    assert.equal(b0 + 2, w.batches)
    assert.is_false(db:in_transaction())
    assert.equal(1, tonumber(db:row("SELECT count(*) AS n FROM t WHERE v = 'v2'").n))
  end)

  it("commits at once, without the loop, in sync mode", function()
    local w = db_mod.writer(db)
    w.sync = true
    local b0 = w.batches
    local ok, id = pcall(w.insert, w, nil, "INSERT INTO t (v) VALUES (?)", "sync") -- no coroutine needed
    w.sync = nil
    assert.is_true(ok, id)
    assert.equal("integer", math.type(id))
    assert.equal(b0 + 1, w.batches)
  end)

  it("refuses to commit inside a transaction someone left open: nothing of the batch is written", function()
    local w = db_mod.writer(db)
    local id, err
    assert(db:begin())
    H.async(function()
      id, err = w:insert(nil, "INSERT INTO t (v) VALUES (?)", "inside")
    end)
    assert(db:rollback())
    assert.is_nil(id)
    assert.truthy(err:find("transaction is already open", 1, true), err)
    assert.is_nil(db:row("SELECT id FROM t WHERE v = 'inside'"))
  end)
end)

describe("the daily count", function()
  it("matches the records through sends, failures and a new process", function()
    local dir = H.tmpdir("daily")
    local db = open_db(dir)
    local master_path = dir .. "/master.key"
    assert(vault.create_master(master_path))
    local master = assert(vault.load_master(master_path))
    local tenant = assert(directory.add_tenant(db, master, "daily"))
    local rt = { db = db, master = master }
    -- what Twilio answers to the next POSTs
    local answers = {}
    local twilio = { post = function()
      local a = table.remove(answers, 1)
      if a == "ok" then return { sid = "SM" .. vault.hex(vault.random(16)), status = "queued" } end
      return nil, { code = 21211, message = "invalid", unknown = false }
    end }
    local function send(to)
      return sends.send(rt, { tenant = tenant, tool = "twilio_send_sms", recipient = to,
                              release = sends.claim(tenant.id, to) },
        { request = { form = { To = to } }, text = "hello", ref = "sid", post = function() return twilio.post() end })
    end
    local h = sends.policy_helpers(db, tenant.id)
    local function stored()
      return tonumber(db:row(sends.SQL.today, tenant.id, os.time() - os.time() % 86400).n)
    end
    H.async(function()
      assert.equal(0, h.sends_today())
      answers = { "ok", "ok", "fail", "ok" }
      local me, done = coroutine.running(), 0
      for i = 1, 4 do
        loop.spawn(function()
          send(("+1415555%04d"):format(i))
          done = done + 1
          if done == 4 then loop.wake(me) end
        end)
      end
      loop.wait()
      loop.sleep(0.01)   -- the settles go with the next batch
    end)
    assert.equal(3, stored())
    assert.equal(3, h.sends_today())
    assert.equal(1, h.recent_sends("+14155550001", 600))
    -- a new process reads the count from the records
    sends.recount(db)
    assert.equal(3, h.sends_today())
    H.async(function()
      answers = { "fail" }
      send("+14155550009")
      -- the count leaves the failure at once; its settle goes with the next batch
      assert.equal(3, h.sends_today())
      loop.sleep(0.01)
    end)
    assert.equal(3, h.sends_today())
    assert.equal(3, stored())
    master:close()
    db:close()
  end)
end)

describe("the outcome of a send", function()
  it("is answered without waiting for its settle, which goes with the next batch", function()
    local dir = H.tmpdir("settle")
    local db = open_db(dir)
    local master_path = dir .. "/master.key"
    assert(vault.create_master(master_path))
    local master = assert(vault.load_master(master_path))
    local tenant = assert(directory.add_tenant(db, master, "settle"))
    local rt = { db = db, master = master }
    local w = db_mod.writer(db)
    local twilio = { post = function() return { sid = "SM" .. vault.hex(vault.random(16)), status = "queued" } end }
    local status_after, batches_after
    H.async(function()
      local before = w.batches
      assert.truthy(sends.send(rt, { tenant = tenant, tool = "twilio_send_sms", recipient = "+14155550123",
                                     release = sends.claim(tenant.id, "+14155550123") },
        { request = { form = { To = "+14155550123" } }, text = "hello", ref = "sid",
          post = function() return twilio.post() end }))
      -- answered after one commit (the write-ahead record); the settle is queued
      batches_after = w.batches - before
      status_after = db:row("SELECT status FROM sends ORDER BY id DESC LIMIT 1").status
      loop.sleep(0.01)
    end)
    assert.equal(1, batches_after)
    assert.equal("in_flight", status_after)
    assert.equal("sent", db:row("SELECT status FROM sends ORDER BY id DESC LIMIT 1").status)
    master:close()
    db:close()
  end)
end)
