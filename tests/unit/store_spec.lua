-- core.store: SQLite with WAL, synchronous=FULL, cached statements.
-- Run: ./switchboard exec /usr/bin/busted tests/unit/store_spec.lua
local store = require "core.store"

describe("core.store", function()
  local dir, db

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. dir))
  end)

  teardown(function()
    os.execute("rm -rf " .. dir)
  end)

  before_each(function()
    os.remove(dir .. "/t.db")
    db = assert(store.open(dir .. "/t.db"))
    assert(db:exec([[
      CREATE TABLE kv (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, v);
      CREATE TABLE parent (id INTEGER PRIMARY KEY);
      CREATE TABLE child (id INTEGER PRIMARY KEY,
                          parent_id INTEGER NOT NULL REFERENCES parent(id));
    ]]))
  end)

  after_each(function()
    db:close()
  end)

  it("opens with WAL, synchronous=FULL, foreign keys and a busy timeout", function()
    assert.equal("wal", db:row("PRAGMA journal_mode").journal_mode)
    assert.equal(2, db:row("PRAGMA synchronous").synchronous) -- 2 = FULL
    assert.equal(1, db:row("PRAGMA foreign_keys").foreign_keys)
    assert.equal(5000, db:row("PRAGMA busy_timeout").timeout)
  end)

  it("round-trips every type", function()
    local big = math.maxinteger
    local cases = {
      { "int", 42 }, { "neg", -7 }, { "big", big }, { "small", math.mininteger },
      { "float", 1.5 }, { "intfloat", 2.0 }, { "text", "héllo" },
      { "empty", "" }, { "true", true }, { "false", false },
    }
    for _, c in ipairs(cases) do
      assert(db:run("INSERT INTO kv (k, v) VALUES (?, ?)", c[1], c[2]))
    end
    assert(db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "null", nil))
    assert(db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "blob", store.blob("\0\1\2\255")))

    local function get(k) return db:row("SELECT v, typeof(v) AS t FROM kv WHERE k = ?", k) end
    assert.equal(42, get("int").v)
    assert.equal("integer", math.type(get("int").v))
    assert.equal(-7, get("neg").v)
    assert.equal(big, get("big").v)
    assert.equal("integer", math.type(get("big").v))
    assert.equal(math.mininteger, get("small").v)
    assert.equal(1.5, get("float").v)
    assert.equal("float", math.type(get("float").v))
    assert.equal("real", get("intfloat").t)
    assert.equal("float", math.type(get("intfloat").v))
    assert.equal("héllo", get("text").v)
    assert.equal("text", get("text").t)
    assert.equal("", get("empty").v)
    assert.equal(1, get("true").v)
    assert.equal(0, get("false").v)
    assert.is_nil(get("null").v)
    assert.equal("null", get("null").t)
    assert.equal("\0\1\2\255", get("blob").v)
    assert.equal("blob", get("blob").t)
    -- a numeric-looking string stays TEXT
    assert(db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "numstr", "123"))
    assert.equal("text", get("numstr").t)
    assert.equal("123", get("numstr").v)
  end)

  it("returns rows, changes and rowids", function()
    local n, extra = db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
    assert.equal(1, n)
    assert.is_nil(extra)                 -- run gives the change count only
    local id = db:insert("INSERT INTO kv (k, v) VALUES (?, ?)", "b", 2)
    assert.equal(2, id)
    assert.equal(0, db:run("UPDATE kv SET v = 0 WHERE k = 'none'"))   -- 0 changes: still success
    local rows = assert(db:query("SELECT k, v FROM kv ORDER BY k"))
    assert.same({ { k = "a", v = 1 }, { k = "b", v = 2 } }, rows)
    assert.same({}, db:query("SELECT k FROM kv WHERE k = ?", "zzz"))
    assert.is_nil(db:row("SELECT k FROM kv WHERE k = ?", "zzz"))
    assert.equal(2, (db:run("UPDATE kv SET v = v + 1")))
  end)

  it("caches statements by SQL text", function()
    for i = 1, 500 do
      assert(db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "k" .. i, i))
    end
    for i = 1, 500 do
      assert.equal(i, db:row("SELECT v FROM kv WHERE k = ?", "k" .. i).v)
    end
    -- a statement left mid-way (row) is reset before its next use
    assert.equal(1, db:row("SELECT v FROM kv ORDER BY v").v)
    assert.equal(1, db:row("SELECT v FROM kv ORDER BY v").v)
    -- many distinct statements go past the cache bound without trouble
    for i = 1, 300 do
      assert.equal(i, db:row("SELECT " .. i .. " AS x").x)
    end
    assert.equal(500, db:row("SELECT count(*) AS n FROM kv").n)
  end)

  it("rolls back a transaction", function()
    assert(db:run("INSERT INTO kv (k, v) VALUES ('keep', 1)"))
    assert.is_true(db:begin())
    assert(db:run("INSERT INTO kv (k, v) VALUES ('gone', 2)"))
    assert.equal(2, db:row("SELECT count(*) AS n FROM kv").n)
    assert.is_true(db:rollback())
    assert.equal(1, db:row("SELECT count(*) AS n FROM kv").n)
    assert.is_nil(db:row("SELECT * FROM kv WHERE k = 'gone'"))
  end)

  it("commits a transaction visible to another connection", function()
    assert.is_true(db:begin())
    assert(db:run("INSERT INTO kv (k, v) VALUES ('c', 3)"))
    local other = assert(store.open(dir .. "/t.db"))
    assert.is_nil(other:row("SELECT * FROM kv WHERE k = 'c'"))
    assert.is_true(db:commit())
    assert.equal(3, other:row("SELECT v FROM kv WHERE k = 'c'").v)
    other:close()
  end)

  it("returns nil, err for transaction misuse", function()
    local ok, err = db:commit()
    assert.is_nil(ok)
    assert.matches("no transaction is active", err, 1, true)
    assert.is_true(db:begin())
    ok, err = db:begin()
    assert.is_nil(ok)
    assert.matches("within a transaction", err, 1, true)
    assert.is_true(db:rollback())
  end)

  it("returns nil, err for SQL errors and stays usable", function()
    local rows, err = db:query("SELEC 1")
    assert.is_nil(rows)
    assert.matches("syntax error", err, 1, true)
    rows, err = db:query("SELECT * FROM nosuch")
    assert.is_nil(rows)
    assert.matches("no such table", err, 1, true)

    assert(db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "dup", "secret-value-1"))
    local n
    n, err = db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "dup", "secret-value-2")
    assert.is_nil(n)
    assert.equal("UNIQUE constraint failed: kv.k", err)
    assert.is_nil(err:find("secret", 1, true))

    n, err = db:run("INSERT INTO kv (k, v) VALUES (?, ?)", nil, 1)
    assert.is_nil(n)
    assert.matches("NOT NULL constraint failed", err, 1, true)

    n, err = db:run("INSERT INTO child (parent_id) VALUES (?)", 99)
    assert.is_nil(n)
    assert.matches("FOREIGN KEY constraint failed", err, 1, true)

    local ok
    ok, err = db:exec("CREATE TABLE kv (x)")
    assert.is_nil(ok)
    assert.matches("already exists", err, 1, true)

    -- the same cached statements still work
    assert.equal(1, (db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "dup2", 1)))
    assert.equal(2, db:row("SELECT count(*) AS n FROM kv").n)
  end)

  it("insert returns the new row's id or nil, err, never something to take for an id", function()
    assert.equal(1, db:insert("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1))
    local id, err = db:insert("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 2)
    assert.is_nil(id)
    assert.equal("UNIQUE constraint failed: kv.k", err)
    -- an ignored insert inserted nothing: no stale rowid of an earlier one
    id, err = db:insert("INSERT OR IGNORE INTO kv (k, v) VALUES (?, ?)", "a", 3)
    assert.is_nil(id)
    assert.equal("no row was inserted", err)
    id, err = db:insert("SELECT 1")
    assert.is_nil(id)
    assert.equal("no row was inserted", err)
    assert.equal(2, db:insert("INSERT INTO kv (k, v) VALUES (?, ?)", "b", 2))
  end)

  it("refuses SQL text with an embedded NUL instead of running what comes before it", function()
    assert.has_error(function() db:run("DELETE FROM kv\0 WHERE k = 'x'") end,
      "bad argument #1 to 'run' (SQL text contains a NUL byte)")
    assert.has_error(function() db:query("SELECT 1\0; DROP TABLE kv") end)
    assert.has_error(function() db:insert("INSERT INTO kv (k, v) VALUES ('n', 1)\0") end)
    assert.has_error(function() db:exec("CREATE TABLE a (x);\0DROP TABLE kv") end,
      "bad argument #1 to 'exec' (SQL text contains a NUL byte)")
    assert.is_nil(db:row("SELECT name FROM sqlite_master WHERE name = 'a'"))
    assert.truthy(db:row("SELECT name FROM sqlite_master WHERE name = 'kv'"))
  end)

  it("says whether a transaction is open", function()
    assert.is_false(db:in_transaction())
    assert(db:begin())
    assert.is_true(db:in_transaction())
    assert(db:rollback())
    assert.is_false(db:in_transaction())
  end)

  it("a failed statement inside a transaction leaves it to the caller", function()
    assert.is_true(db:begin())
    assert(db:run("INSERT INTO kv (k, v) VALUES ('t1', 1)"))
    assert.is_nil((db:run("INSERT INTO kv (k, v) VALUES ('t1', 2)")))
    assert(db:run("INSERT INTO kv (k, v) VALUES ('t2', 2)"))
    assert.is_true(db:commit())
    assert.equal(2, db:row("SELECT count(*) AS n FROM kv").n)
  end)

  it("raises on a parameter count mismatch or a bad type", function()
    assert.has_error(function() db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "a") end,
      "wrong number of SQL parameters: the statement takes 2, got 1")
    assert.has_error(function() db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1, 2) end,
      "wrong number of SQL parameters: the statement takes 2, got 3")
    assert.has_error(function() db:query("SELECT 1", 1) end)
    assert.has_error(function() db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "a", {}) end,
      "bad SQL parameter #2: cannot bind a table")
    assert.has_error(function() db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "a", print) end)
    assert.has_error(function() db:query("SELECT 1; SELECT 2") end)
    assert.has_error(function() db:query("") end)
    assert.has_error(function() store.blob(1) end)
    -- still usable, and the statement is rebound cleanly after a raise
    assert.equal(1, (db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)))
    assert.same({ { k = "a", v = 1 } }, db:query("SELECT k, v FROM kv"))
  end)

  it("allows trailing semicolons and comments after one statement", function()
    assert.equal(1, db:row("SELECT 1 AS x;").x)
    assert.equal(1, db:row("SELECT 1 AS x; -- done").x)
  end)

  it("keeps user_version", function()
    assert.equal(0, db:user_version())
    assert.is_true(db:set_user_version(3))
    assert.equal(3, db:user_version())
    db:close()
    db = assert(store.open(dir .. "/t.db"))
    assert.equal(3, db:user_version())
    assert.has_error(function() db:set_user_version("x") end)
  end)

  it("closes idempotently and raises after close", function()
    local d = assert(store.open(dir .. "/t.db"))
    assert(d:row("SELECT 1 AS x"))
    d:close()
    d:close()
    assert.equal("core.store.Db (closed)", tostring(d))
    for _, fn in ipairs({ "exec", "query", "row", "run", "begin", "commit",
                          "rollback", "user_version" }) do
      assert.has_error(function() d[fn](d, "SELECT 1") end,
        "attempt to use a closed database")
    end
    assert.has_error(function() d:set_user_version(1) end,
      "attempt to use a closed database")
  end)

  it("works as a to-be-closed variable and under garbage collection", function()
    local keep
    do
      local d <close> = assert(store.open(dir .. "/t.db"))
      assert(d:row("SELECT 1 AS x"))
      keep = d
    end
    assert.equal("core.store.Db (closed)", tostring(keep))
    for _ = 1, 20 do
      local d = assert(store.open(dir .. "/t.db"))
      assert(d:row("SELECT count(*) FROM kv"))
    end
    collectgarbage()
    collectgarbage()
  end)

  it("returns nil, err when the file cannot be opened", function()
    local d, err = store.open(dir .. "/no/such/dir/x.db")
    assert.is_nil(d)
    assert.equal("unable to open database file", err)
  end)
end)

describe("core.store on a full disk", function()
  local H = require("helpers")
  local fs, db

  setup(function()
    fs = require("fullfs").mount(H.tmpdir("full") .. "/m", "2m")
    db = assert(store.open(fs.dir .. "/t.db"))
    assert(db:exec("CREATE TABLE kv (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB)"))
  end)

  teardown(function()
    if db then db:close() end
    fs.umount()
  end)

  it("fails the statement with nil, err: no id, no change count", function()
    assert.equal(1, db:insert("INSERT INTO kv (k, v) VALUES (?, ?)", "before", ("x"):rep(100)))
    fs.fill()
    local id, err = db:insert("INSERT INTO kv (k, v) VALUES (?, ?)", "full", store.blob(("y"):rep(8192)))
    assert.is_nil(id)
    assert.matches("full", err, 1, true)
    local n, rerr = db:run("INSERT INTO kv (k, v) VALUES (?, ?)", "full", store.blob(("y"):rep(8192)))
    assert.is_nil(n)
    assert.is_string(rerr)
    assert.is_false(db:in_transaction())
    fs.free()
    assert.equal(2, db:insert("INSERT INTO kv (k, v) VALUES (?, ?)", "after", "z"))
    assert.equal(2, db:row("SELECT count(*) AS n FROM kv").n)
  end)
end)
