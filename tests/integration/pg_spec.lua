-- core.pg and the PostgreSQL store's pool (switchboard.store.pg) against a
-- real PostgreSQL started for this spec (tests/support/postgres.lua: initdb
-- in a scratch directory, a Unix socket only, SCRAM passwords).
local H = require("helpers")
local loop = require("core.loop")
local pg = require("core.pg")
local store = require("core.store")
local postgres = require("support.postgres")
local pgstore = require("switchboard.store.pg")

-- Wait (on the loop) until pred() holds, for at most 20 s.
local function eventually(pred, what)
  for _ = 1, 400 do
    if pred() then return end
    loop.sleep(0.05)
  end
  error("timed out waiting for " .. what, 2)
end

describe("core.pg", function()
  local server

  setup(function()
    server = postgres.start()
  end)

  teardown(function()
    if server then server:stop() end
  end)

  local function connect()
    return assert(pg.connect(server.conninfo, { password_file = server.password_file }))
  end

  it("connects and returns typed rows", function()
    H.async(function()
      local c <close> = connect()
      assert.equal("idle", c:status())
      assert.is_true(c:server_version() >= 150000)
      local rows, n = c:query([[SELECT 1::int2 AS s, 2::int4 AS i, 9007199254740993::int8 AS b,
        true AS t, false AS f, NULL::text AS n, 1.5::float8 AS d, 'x'::text AS x,
        '\x00ff01'::bytea AS by, 12::numeric AS num, 2.5::numeric AS frac, 'é' AS u]])
      assert.equal(1, n)
      local r = rows[1]
      assert.equal("integer", math.type(r.s))
      assert.equal("integer", math.type(r.i))
      assert.equal(9007199254740993, r.b)
      assert.equal("integer", math.type(r.b))
      assert.is_true(r.t)
      assert.is_false(r.f)
      assert.is_nil(r.n)
      assert.equal("float", math.type(r.d))
      assert.equal(1.5, r.d)
      assert.equal("x", r.x)
      assert.equal("\0\255\1", r.by)
      assert.equal(12, r.num)
      assert.equal(2.5, r.frac)
      assert.equal("é", r.u)
    end)
  end)

  it("binds parameters as data, bytea in binary, and refuses what it cannot bind", function()
    H.async(function()
      local c <close> = connect()
      assert(c:exec("CREATE TABLE people (id serial PRIMARY KEY, name text NOT NULL, photo bytea, n bigint, ok boolean)"))
      local evil = "x'); DROP TABLE people; --"
      local rows, n = c:query("INSERT INTO people (name, photo, n, ok) VALUES ($1, $2, $3, $4) RETURNING id",
        evil, pg.bytea("\0\1\2\0"), -(1 << 62), true)
      assert.equal(1, n)
      local id = rows[1].id
      assert.equal("integer", math.type(id))
      -- core.store's blobs bind as bytea too
      assert(c:query("UPDATE people SET photo = $1 WHERE id = $2", store.blob("\0z"), id))
      local r = c:query("SELECT name, photo, n, ok FROM people WHERE id = $1", id)[1]
      assert.equal(evil, r.name)
      assert.equal("\0z", r.photo)
      assert.equal(-(1 << 62), r.n)
      assert.is_true(r.ok)
      assert.equal(1, c:query("SELECT count(*) AS n FROM people")[1].n)
      -- a float keeps its precision; a NULL parameter is NULL
      assert.equal(0.1 + 0.2, c:query("SELECT $1::float8 AS f", 0.1 + 0.2)[1].f)
      assert.is_nil(c:query("SELECT $1::text AS v", nil)[1].v)
      assert.has_error(function() c:query("SELECT $1::text", "a\0b") end,
        "parameter 1: a string with a zero byte (bind binary data with pg.bytea)")
      assert.has_error(function() c:query("SELECT $1::text", {}) end, "parameter 1: cannot bind a table")
      assert.has_error(function() c:query("SELECT 1\0; DROP TABLE people") end, "SQL text contains a zero byte")
      assert.equal(1, c:query("SELECT count(*) AS n FROM people")[1].n)
    end)
  end)

  it("sends and receives values larger than the socket's buffers", function()
    H.async(function()
      local c <close> = connect()
      local big = ("0123456789abcdef"):rep(256 * 1024)           -- 4 MiB
      local blob = ("\0\255"):rep(512 * 1024)                     -- 1 MiB of binary
      local r = c:query("SELECT length($1::text) AS n, md5($1::text) AS h, $2::bytea AS b, $1::text AS back",
        big, pg.bytea(blob))[1]
      assert.equal(#big, r.n)
      assert.equal(#big, #r.back)
      assert.is_true(r.back == big)
      assert.is_true(r.b == blob)
    end)
  end)

  it("keeps loop.run going while a query waits, and not once nobody waits", function()
    -- in a process of its own: loop.run returns when no watcher keeps it
    local dir = H.tmpdir("pgrun")
    H.write(dir .. "/run.lua", ([[
      local loop = require("core.loop")
      local pg = require("core.pg")
      local conn
      loop.spawn(function()
        conn = assert(pg.connect(%q, { password_file = %q }))
        local rows = assert(conn:query("SELECT pg_sleep(0.3)::text AS z, 7 AS n"))
        print("answered", rows[1].n)
      end)
      loop.run()
      print("returned", conn:status())
    ]]):format(server.conninfo, server.password_file))
    local out, code = H.sh(("timeout 20 %s exec %s 2>&1"):format(H.q(H.BIN), H.q(dir .. "/run.lua")))
    os.execute("rm -rf " .. H.q(dir))
    assert.equal(0, code, out)
    assert.equal("answered\t7\nreturned\tidle\n", out)
  end)

  it("prepares a statement once per connection and reuses it", function()
    H.async(function()
      local c <close> = connect()
      local sql = "SELECT $1::int + 1 AS v"
      for i = 1, 5 do assert.equal(i + 1, c:query(sql, i)[1].v) end
      local rows = c:query("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = $1", sql)
      assert.equal(1, rows[1].n)
      assert.equal(2, c:prepared())     -- sql and the count itself
      -- a table altered under a cached SELECT *: prepared again, once
      assert(c:exec("CREATE TABLE alt (a int); INSERT INTO alt VALUES (1)"))
      assert.is_nil(c:query("SELECT * FROM alt")[1].b)
      assert(c:exec("ALTER TABLE alt ADD COLUMN b int DEFAULT 7"))
      assert.equal(7, c:query("SELECT * FROM alt")[1].b)
    end)
  end)

  it("answers an error with its SQLSTATE and stays usable", function()
    H.async(function()
      local c <close> = connect()
      local rows, err, code = c:query("SELECT * FROM no_such_table")
      assert.is_nil(rows)
      assert.equal("42P01", code)
      assert.equal('relation "no_such_table" does not exist (SQLSTATE 42P01)', err)
      assert(c:exec("CREATE TABLE u (k text PRIMARY KEY)"))
      assert(c:query("INSERT INTO u VALUES ($1)", "a"))
      rows, err, code = c:query("INSERT INTO u VALUES ($1)", "a")
      assert.is_nil(rows)
      assert.equal("23505", code)
      assert.matches("duplicate key value", err)
      local ok, eerr, ecode = c:exec("SELECT 1/0")
      assert.is_nil(ok)
      assert.equal("22012", ecode)
      assert.matches("division by zero", eerr)
      assert.equal("idle", c:status())
      assert.equal(1, c:query("SELECT 1 AS one")[1].one)
    end)
  end)

  it("runs two coroutines' queries at once without blocking the loop", function()
    H.async(function()
      local a <close> = connect()
      local b <close> = connect()
      local ticks, results, done = 0, {}, 0
      local me = coroutine.running()
      local timer = loop.timer(0.05, 0.05, function() ticks = ticks + 1 end)
      local sql = [[SELECT extract(epoch FROM clock_timestamp())::float8 AS s, pg_sleep(1)::text AS z,
        extract(epoch FROM clock_timestamp())::float8 AS e]]
      for name, c in pairs({ a = a, b = b }) do
        loop.spawn(function()
          results[name] = assert(c:query(sql))[1]
          done = done + 1
          if done == 2 then loop.wake(me) end
        end)
      end
      -- both were sent before either answered: the calls yielded
      assert.equal(0, done)
      assert.equal("busy", a:status())
      assert.equal("busy", b:status())
      loop.wait()
      timer:close()
      -- the two sleeps overlapped on the server, and the timer ran meanwhile
      assert.is_true(results.a.s < results.b.e and results.b.s < results.a.e)
      assert.is_true(ticks >= 5, "ticks: " .. ticks)
    end)
  end)

  it("raises when a second command is started on a busy connection", function()
    H.async(function()
      local c <close> = connect()
      loop.spawn(function() c:query("SELECT pg_sleep(0.2)") end)
      assert.has_error(function() c:query("SELECT 1") end,
        "conn:query: the connection is busy (one command at a time)")
    end)
  end)

  it("closes the connection of a coroutine closed while its query waits", function()
    H.async(function()
      local c = connect()
      local pid = c:backend_pid()
      local co = coroutine.create(function() return c:query("SELECT pg_sleep(30)") end)
      -- run it on the loop: it yields inside the query
      loop.spawn(function() coroutine.resume(co) end)
      assert.equal("busy", c:status())
      assert.equal("suspended", coroutine.status(co))
      local t0 = loop.time()
      assert.is_true(coroutine.close(co))
      assert.is_true(loop.time() - t0 < 1)
      assert.equal("closed", c:status())
      -- the server ends that session (its socket is gone)
      local other <close> = connect()
      other:query("SELECT pg_cancel_backend($1)", pid)
      for _ = 1, 100 do
        if other:query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1", pid)[1].n == 0 then break end
        loop.sleep(0.05)
      end
      assert.equal(0, other:query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1", pid)[1].n)
    end)
  end)

  it("wakes a query waiting on a connection closed by another coroutine", function()
    H.async(function()
      local c = connect()
      local me, got = coroutine.running(), nil
      loop.spawn(function()
        got = table.pack(c:query("SELECT pg_sleep(30)"))
        loop.wake(me)
      end)
      c:close()
      loop.wait()
      assert.is_nil(got[1])
      assert.equal("connection closed", got[2])
      assert.has_error(function() c:query("SELECT 1") end, "attempt to use a closed core.pg.Conn")
      c:close()                                  -- idempotent
    end)
  end)

  it("carries LISTEN/NOTIFY between two connections", function()
    H.async(function()
      local a <close> = connect()
      local b <close> = connect()
      assert(a:listen("sb events"))               -- quoted as an identifier
      assert.same({ nil, "timeout" }, { a:wait_notify(0) })
      local got
      loop.spawn(function() got = table.pack(a:wait_notify(10)) end)
      assert(b:query("SELECT pg_notify($1, $2)", "sb events", "tenant:7"))
      eventually(function() return got end, "the notification")
      assert.same({ "sb events", "tenant:7", b:backend_pid(), n = 3 }, got)
      -- a timeout
      local t = table.pack(a:wait_notify(0.1))
      assert.same({ nil, "timeout", n = 2 }, t)
      -- the callback form: one coroutine per notification
      local seen = {}
      a:on_notify(function(ch, payload, pid)
        seen[#seen + 1] = ch .. "=" .. payload .. "@" .. pid
      end)
      assert.has_error(function() a:wait_notify(1) end,
        "conn:wait_notify: notifications go to the on_notify function")
      assert(b:exec([[NOTIFY "sb events", 'one'; NOTIFY "sb events", 'two']]))
      eventually(function() return #seen == 2 end, "two notifications")
      local p = b:backend_pid()
      assert.same({ "sb events=one@" .. p, "sb events=two@" .. p }, seen)
      a:on_notify(nil)
      assert(a:unlisten("sb events"))
    end)
  end)

  it("reads the password from a file and keeps it out of every message", function()
    local dir = H.tmpdir("pgpw")
    H.async(function()
      local missing = dir .. "/none"
      local c, err = pg.connect(server.conninfo, { password_file = missing })
      assert.is_nil(c)
      assert.equal("password_file " .. missing .. ": no such file or directory", err)
      local open = dir .. "/open"
      H.write(open, server.password .. "\n")
      os.execute("chmod 0644 " .. H.q(open))
      c, err = pg.connect(server.conninfo, { password_file = open })
      assert.is_nil(c)
      assert.equal("password_file " .. open .. ": readable by group or others (mode 0644): chmod 600 it", err)
      local empty = dir .. "/empty"
      H.write(empty, "\n")
      os.execute("chmod 0600 " .. H.q(empty))
      c, err = pg.connect(server.conninfo, { password_file = empty })
      assert.is_nil(c)
      assert.equal("password_file " .. empty .. ": empty", err)
      -- the wrong password: the server refuses, and nothing says what was tried
      local wrong = dir .. "/wrong"
      H.write(wrong, "not-the-password-" .. server.password:sub(1, 4) .. "\n")
      os.execute("chmod 0600 " .. H.q(wrong))
      c, err = pg.connect(server.conninfo, { password_file = wrong })
      assert.is_nil(c)
      assert.matches("password authentication failed for user \"sb\"", err, 1, true)
      assert.is_nil(err:find("not-the-password", 1, true))
      -- no password at all
      c, err = pg.connect(server.conninfo)
      assert.is_nil(c)
      assert.matches("password", err)
      -- a password in the connection string is refused before anything is sent
      c, err = pg.connect(server.conninfo .. " password=" .. server.password)
      assert.is_nil(c)
      assert.equal("conninfo: holds a password; give it in password_file instead", err)
      c, err = pg.connect("postgresql://sb:" .. server.password .. "@/sb?host=" .. server.dir)
      assert.is_nil(c)
      assert.equal("conninfo: holds a password; give it in password_file instead", err)
      c, err = pg.connect("host=" .. server.dir .. " password='" .. server.password)
      assert.is_nil(c)
      assert.equal("conninfo: not a valid connection string or postgresql:// URL", err)
      -- the URL form, with the right file
      c = assert(pg.connect(server.url, { password_file = server.password_file }))
      assert.equal(1, c:query("SELECT 1 AS x")[1].x)
      c:close()
    end)
    os.execute("rm -rf " .. H.q(dir))
  end)

  it("times out a connection that does not answer", function()
    -- a listening Unix socket that never accepts: libpq's startup waits
    local dir = H.tmpdir("pgto")
    H.async(function()
      local l = assert(loop.listen(dir .. "/.s.PGSQL.5432", tonumber("600", 8), function(s) loop.sleep(1) s:close() end, 1))
      local t0 = loop.time()
      local c, err = pg.connect("host=" .. dir .. " dbname=sb user=sb", { connect_timeout = 0.3 })
      assert.is_nil(c)
      assert.equal("connection timed out", err)
      assert.is_true(loop.time() - t0 < 5)
      l:close()
    end)
    os.execute("rm -rf " .. H.q(dir))
  end)
end)

describe("switchboard.store.pg", function()
  local server

  setup(function()
    server = postgres.start()
  end)

  teardown(function()
    if server then server:stop() end
  end)

  local function pool(opts)
    opts = opts or {}
    opts.conninfo = server.conninfo
    opts.password_file = server.password_file
    return pgstore.new(opts)
  end

  it("numbers ? placeholders once per text, outside literals and comments", function()
    assert.equal("SELECT $1, '?', \"a?\", $2 -- ?\n, $3 /* ? */",
      pgstore.translate("SELECT ?, '?', \"a?\", ? -- ?\n, ? /* ? */"))
    assert.equal("SELECT 'it''s ?', $1", pgstore.translate("SELECT 'it''s ?', ?"))
  end)

  it("has the SQLite handle's methods", function()
    H.async(function()
      local db = pool({ size = 2 })
      assert(db:exec([[CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, n int);
        CREATE TABLE kv (k text PRIMARY KEY, v text)]]))
      local id = assert(db:insert("INSERT INTO items (name, n) VALUES (?, ?)", "a", 1))
      assert.equal("integer", math.type(id))
      local id2 = assert(db:insert("INSERT INTO items (name, n) VALUES (?, ?) RETURNING id", "b", 2))
      assert.equal(id + 1, id2)
      assert.same({ nil, "no row was inserted" },
        { db:insert("INSERT INTO items (name) VALUES (?) ON CONFLICT DO NOTHING", "a") })
      local _, err = db:insert("INSERT INTO items (name) VALUES (?)", "a")
      assert.matches("SQLSTATE 23505", err)
      assert.equal(2, db:run("UPDATE items SET n = n + ?", 10))
      assert.equal(0, db:run("UPDATE items SET n = 0 WHERE name = ?", "none"))
      assert.same({ id = id, name = "a", n = 11 }, db:row("SELECT * FROM items WHERE name = ?", "a"))
      assert.is_nil(db:row("SELECT * FROM items WHERE name = ?", "none"))
      assert.equal(2, #db:query("SELECT * FROM items ORDER BY id"))
      assert.equal(2, #db:rows("SELECT * FROM items ORDER BY id"))
      -- one ? text, many calls: translated once, prepared once per connection
      for i = 1, 3 do db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "k" .. i, "v") end
      assert.equal(3, db:row("SELECT count(*) AS n FROM kv").n)
      db:close()
    end)
  end)

  it("keeps a transaction on one connection per coroutine", function()
    H.async(function()
      local db = pool({ size = 3 })
      assert(db:exec("CREATE TABLE t (k text PRIMARY KEY)"))
      assert.is_false(db:in_transaction())
      assert(db:begin())
      assert.is_true(db:in_transaction())
      assert.same({ nil, "a transaction is already open" }, { db:begin() })
      assert(db:run("INSERT INTO t VALUES (?)", "in-tx"))
      -- another coroutine sees neither the transaction nor its row
      local me, other = coroutine.running(), nil
      loop.spawn(function()
        other = { db:in_transaction(), db:row("SELECT count(*) AS n FROM t").n }
        loop.wake(me)
      end)
      loop.wait()
      assert.same({ false, 0 }, other)
      assert(db:rollback())
      assert.is_false(db:in_transaction())
      assert.equal(0, db:row("SELECT count(*) AS n FROM t").n)

      -- transaction(fn): true commits, nil, err rolls back, an error rolls back and raises
      assert.is_true(db:transaction(function(tx)
        assert(tx:run("INSERT INTO t VALUES (?)", "kept"))
        return true
      end))
      assert.same({ nil, "no" }, { db:transaction(function(tx)
        assert(tx:run("INSERT INTO t VALUES (?)", "dropped"))
        return nil, "no"
      end) })
      assert.has_error(function()
        db:transaction(function(tx)
          assert(tx:run("INSERT INTO t VALUES (?)", "dropped too"))
          error("boom", 0)
        end)
      end, "boom")
      -- a statement that failed aborts the transaction: the COMMIT says so
      local ok, err = db:transaction(function(tx)
        assert(tx:run("INSERT INTO t VALUES (?)", "lost"))
        tx:run("INSERT INTO t VALUES (?)", "kept")      -- duplicate key
        return true
      end)
      assert.is_nil(ok)
      assert.equal("the transaction was rolled back: a statement in it failed", err)
      assert.same({ { k = "kept" } }, db:query("SELECT k FROM t ORDER BY k"))
      assert.equal(0, db:stats().open - db:stats().idle)
      db:close()
    end)
  end)

  it("closes the transaction of a coroutine that ended without COMMIT once it is collected", function()
    H.async(function()
      local db = pool({ size = 2 })
      assert(db:exec("CREATE TABLE locked (k text PRIMARY KEY)"))
      local ended = false
      loop.spawn(function()
        assert(db:begin())
        assert(db:run("INSERT INTO locked VALUES (?)", "x"))      -- holds the key's lock
        ended = true                                              -- and ends, no COMMIT
      end)
      eventually(function() return ended end, "the coroutine to end")
      assert.equal(1, db:stats().open - db:stats().idle)
      collectgarbage()
      collectgarbage()
      assert.equal(0, db:stats().open - db:stats().idle)
      -- rolled back, and the lock is gone: the same key goes in at once
      assert.equal(1, db:run("INSERT INTO locked VALUES (?)", "x"))
      db:close()
    end)
  end)

  it("runs db.lua's group-commit writer", function()
    H.async(function()
      local dbm = require("switchboard.db")
      local db = pool({ size = 2 })
      assert(db:exec("CREATE TABLE w (id bigserial PRIMARY KEY, v text UNIQUE)"))
      local w = dbm.writer(db)
      local me, results, n = coroutine.running(), {}, 0
      for i = 1, 5 do
        loop.spawn(function()
          -- the third one fails alone (a duplicate), in its savepoint
          results[i] = table.pack(w:insert(nil, "INSERT INTO w (v) VALUES (?)", i == 3 and "v1" or "v" .. i))
          n = n + 1
          if n == 5 then loop.wake(me) end
        end)
      end
      loop.wait()
      for i = 1, 5 do
        if i == 3 then
          assert.is_nil(results[i][1])
          assert.matches("SQLSTATE 23505", results[i][2])
        else
          assert.equal("integer", math.type(results[i][1]))
        end
      end
      assert.equal(4, db:row("SELECT count(*) AS n FROM w").n)
      assert.equal(1, w.batches)
      db:close()
    end)
  end)

  it("queues callers past its size and gives every connection back", function()
    H.async(function()
      local db = pool({ size = 2 })
      local me, done, errs = coroutine.running(), 0, {}
      for i = 1, 6 do
        loop.spawn(function()
          local r, err = db:row("SELECT pg_sleep(0.05)::text AS z, ?::int AS i", i)
          if not r then errs[#errs + 1] = err end
          done = done + 1
          if done == 6 then loop.wake(me) end
        end)
      end
      assert.equal(2, db:stats().open)
      assert.equal(4, db:stats().waiting)
      loop.wait()
      assert.same({}, errs)
      assert.same({ open = 2, idle = 2, waiting = 0, size = 2 }, db:stats())
      -- a caller that waits longer than acquire_timeout is told so
      db.acquire_timeout = 0.2
      local holds = 0
      for _ = 1, 2 do
        loop.spawn(function() db:row("SELECT pg_sleep(1)::text AS z") holds = holds + 1 end)
      end
      local r, err = db:row("SELECT 1 AS x")
      assert.is_nil(r)
      assert.equal("postgresql: no free connection within 0.2 s (pool of 2)", err)
      while holds < 2 do loop.sleep(0.05) end
      assert.equal(1, db:row("SELECT 1 AS x").x)
      db:close()
    end)
  end)

  it("gives back the connection of a coroutine closed while it waits", function()
    H.async(function()
      local db = pool({ size = 2 })
      local sleeping = "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'"
      local function in_use() local st = db:stats() return st.open - st.idle end
      for _, body in ipairs({
        function() return db:row("SELECT pg_sleep(30)::text AS z") end,
        function() return db:transaction(function(tx) return tx:row("SELECT pg_sleep(30)::text AS z") end) end,
      }) do
        local co = coroutine.create(body)
        loop.spawn(function() coroutine.resume(co) end)
        eventually(function() return db:row(sleeping).n == 1 end, "the statement to run")
        assert.equal(1, in_use())
        assert.is_true(coroutine.close(co))
        -- given back (what is in use now is the call that ends its session)
        eventually(function() return in_use() == 0 end, "the connection to come back")
        assert.is_false(db:in_transaction())
        assert.equal(2, db:row("SELECT 2 AS x").x)
        -- the abandoned statement's session is ended on the server
        eventually(function() return db:row(sleeping).n == 0 end, "the session to end")
      end
      db:close()
    end, 60)
  end)

  it("fails clearly while the server is down and reconnects when it returns", function()
    H.async(function()
      local db = pool({ size = 2, connect_timeout = 2 })
      assert(db:exec("CREATE TABLE IF NOT EXISTS up (n int)"))
      -- a subscription sees the loss and listens again after it
      local events = {}
      local sub = db:subscribe("sb_test", function(payload) events[#events + 1] = payload or "(resync)" end)
      while not sub.listening do loop.sleep(0.05) end
      local me, inflight = coroutine.running(), nil
      loop.spawn(function()
        inflight = table.pack(db:row("SELECT pg_sleep(30)::text AS z"))
        loop.wake(me)
      end)
      -- the query runs on the server
      local active
      for _ = 1, 200 do
        active = db:row("SELECT count(*) AS n FROM pg_stat_activity WHERE query = ? AND state = 'active'",
          "SELECT pg_sleep(30)::text AS z")
        if active and active.n == 1 then break end
        loop.sleep(0.05)
      end
      assert.equal(1, active.n)
      server:halt("fast")                -- blocks this process until it is down
      loop.wait()
      assert.is_nil(inflight[1])
      assert.matches("terminating connection due to administrator command %(SQLSTATE 57P01%)", inflight[2])
      -- every call answers at once with why
      local r, err = db:row("SELECT 1 AS x")
      assert.is_nil(r)
      assert.matches("^postgresql: connection to server on socket .* failed", err)
      assert.same({ nil, err }, { db:run("INSERT INTO up VALUES (?)", 1) })
      server:resume()
      -- no restart of the pool: the next call opens a new connection
      assert.equal(1, db:run("INSERT INTO up VALUES (?)", 1))
      assert.equal(1, db:row("SELECT count(*) AS n FROM up").n)
      eventually(function() return sub.listening end, "the subscription to listen again")
      assert(db:notify("sb_test", "after"))
      eventually(function() return #events == 2 end, "the notification")
      assert.same({ "(resync)", "after" }, events)
      db:close()
    end, 60)
  end)
end)
