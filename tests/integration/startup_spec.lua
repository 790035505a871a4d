-- Starting `switchboard serve`: file modes of what it creates, refusal of
-- a database others can read, a log file inside a data_dir that does not
-- exist yet, and a broken tool file at start.
local H = require("helpers")
local fs = require("core.fs")

local function mode(path)
  local m, err = fs.mode(path)
  assert(m, err)
  return ("%04o"):format(m)
end

-- the modes of the SQLite file: SQLite only (on PostgreSQL there is no file)
local it_sqlite = H.STORE == "pg" and pending or it

-- the server runs with umask 0, so only its own modes keep others out
local UMASK0 = [[sh -c 'umask 0; exec "$0" "$@"']]

describe("files the server creates", function()
  it_sqlite("creates the data directory 0700 and the database, its WAL and the log 0600", function()
    local srv = H.server({ wrapper = UMASK0 })
    srv.agent("modes", "a", "caioo", "Examples")
    local db = srv.cfg.data_dir .. "/switchboard.db"
    assert.equal("0700", mode(srv.cfg.data_dir))
    assert.equal("0600", mode(db))
    assert.equal("0600", mode(db .. "-wal"))
    assert.equal("0600", mode(db .. "-shm"))
    assert.equal("0600", mode(srv.log))
    assert.equal("0600", mode(srv.cfg.master_key_file))
    -- the socket directory is not the data directory: it keeps the usual mode
    assert.equal("0660", mode(srv.agent_socket))
    assert.equal("0600", mode(srv.admin_socket))
    srv.stop()
  end)

  it_sqlite("refuses to start on a database that group or others can read", function()
    local srv = H.server()
    srv.agent("wide", "a", "caioo", "Examples")
    srv.stop()
    local db = srv.cfg.data_dir .. "/switchboard.db"
    for _, m in ipairs({ "644", "640", "604" }) do
      assert(os.execute("chmod " .. m .. " " .. H.q(db)))
      local ok, err = pcall(srv.start)
      assert.is_false(ok)
      assert.truthy(err:find(("database: %s has mode 0%s, which lets group or others open it: run chmod 600 %s\n")
        :format(db, m, db), 1, true), err)
    end
    -- a -wal file left wider is named too, with the database in one message
    H.write(db .. "-wal", "")
    assert(os.execute("chmod 644 " .. H.q(db .. "-wal")))
    local ok, err = pcall(srv.start)
    assert.is_false(ok)
    assert.truthy(err:find(("%s has mode 0604, %s-wal has mode 0644, which lets group or others open it: "
      .. "run chmod 600 %s %s-wal\n"):format(db, db, db, db), 1, true), err)
    assert(os.execute("chmod 600 " .. H.q(db)))
    ok, err = pcall(srv.start)
    assert.is_false(ok)
    assert.truthy(err:find("run chmod 600 " .. db .. "-wal\n", 1, true), err)
    os.remove(db .. "-wal")
    -- an existing log file others can read is kept, with a warning
    assert(os.execute("chmod 644 " .. H.q(srv.log)))
    srv.start()
    -- (written before the sockets listen, so it is there once start returns)
    assert.truthy(H.read(srv.log):find(("warn log.file %s has mode 0644: others can read what is in it; "
      .. "run chmod 600 %s"):format(srv.log, srv.log), 1, true))
    local r, code = srv.admin("agent list --tenant wide")
    assert.equal(0, code)
    assert.equal("a", r.agents[1].name)
    srv.stop()
  end)

  it("starts when log.file lies inside a data_dir it creates", function()
    local dir = H.tmpdir("logdir")
    local file = dir .. "/data/logs/server.log"
    local srv = H.server({ dir = dir, wrapper = UMASK0, config = { log = { level = "debug", file = file } } })
    assert.is_true(srv.alive())
    assert.truthy(H.read(file):find("switchboard serving", 1, true))
    assert.equal("0600", mode(file))
    assert.equal("0700", mode(dir .. "/data"))
    assert.equal("0700", mode(dir .. "/data/logs"))
    srv.stop()
  end)
end)

describe("a broken tool file at start", function()
  it("is left out with its error in the log; the other tools are served", function()
    local tdir = H.tmpdir("tools")
    H.write(tdir .. "/a_broken.lua", "return { name = 'broken', handler = function( end }")
    H.write(tdir .. "/b_badname.lua", [[
      return { name = "bad name", description = "x", group = "Examples",
               input_schema = { type = "object" }, annotations = { readOnlyHint = true },
               handler = function() end }
    ]])
    H.write(tdir .. "/c_echo.lua", [[
      return { name = "example_echo", description = "Echoes its text.", group = "Examples",
               input_schema = { type = "object", properties = { text = { type = "string" } } },
               annotations = { readOnlyHint = true },
               handler = function(_, args) return { text = args.text or "" } end }
    ]])
    local srv = H.server({ config = { tool_dirs = { H.ROOT .. "/examples/tools", tdir } } })
    local log = H.read(srv.log)
    assert.truthy(log:find("tools: left out " .. tdir .. "/a_broken.lua:1:", 1, true), log)
    assert.truthy(log:find("tools: left out " .. tdir .. "/b_badname.lua: name:", 1, true), log)
    local token = srv.agent("t", "a", "caioo", "Examples")
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      c:initialize(token)
      local names = {}
      for _, t in ipairs(c:request("tools/list", {}).result.tools) do names[#names + 1] = t.name end
      table.sort(names)
      assert.same({ "example_clock", "example_echo", "example_fetch" }, names)
      assert.equal("hi", c:call("example_echo", { text = "hi" }).result.content[1].text)
      c:close()
    end)
    -- a reload still refuses the set as a whole, naming the file
    local _, code, err = srv.admin("reload")
    assert.equal(1, code)
    assert.truthy(err:find("a_broken.lua", 1, true), err)
    srv.stop()
  end)

  it("still refuses to start on a broken policy (the policy set fails closed)", function()
    local pdir = H.tmpdir("pol")
    assert(os.execute(("cp %s/policies/*.lua %s/"):format(H.q(H.ROOT), H.q(pdir))))
    H.write(pdir .. "/99_broken.lua", "return { name = 'broken', priority = 1, check = function( end }")
    local ok, err = pcall(H.server, { config = { policy_dir = pdir } })
    assert.is_false(ok)
    assert.truthy(err:find("policies: ", 1, true), err)
    assert.truthy(err:find("99_broken.lua", 1, true), err)
  end)
end)
