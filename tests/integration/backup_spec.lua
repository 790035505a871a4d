-- Online backup and offline restore: `admin backup FILE` copies the
-- database while agents send (SQLite's backup API, a few pages per loop
-- turn), the file created 0600; `switchboard restore FILE` with the server
-- stopped checks it (a Switchboard database, a known schema version, an
-- audit chain that verifies with the master key) and puts it in place.
-- store: sqlite only (admin backup and restore copy the SQLite file; PostgreSQL is backed up with pg_dump)
local H = require("helpers")
local TW = require("twilio_env")
local cli = require("switchboard.cli")
local loop = require("core.loop")
local fs = require("core.fs")

local ANA = TW.SIM.ANA

local function restore(srv, file)
  return H.sh(("%s restore --config %s %s 2>&1"):format(H.q(H.BIN), H.q(srv.conf), H.q(file)))
end

local function count(srv, sql)
  return tonumber((H.sh(("sqlite3 %s %s"):format(H.q(srv.dir .. "/data/switchboard.db"), H.q(sql)))))
end

describe("admin backup", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "bk")
  end)
  teardown(function() srv.stop() sim.stop() end)

  it("taken during 100 sends restores to a database whose audit trail verifies", function()
    local file = srv.dir .. "/during.db"
    local sent, backup = 0, nil
    H.async(function()
      local sessions, done = {}, 0
      for i = 1, 4 do sessions[i] = TW.session(srv, token) end
      local me = coroutine.running()
      for i = 1, 4 do
        loop.spawn(function()
          for k = 1, 25 do
            local r = TW.call(sessions[i], "twilio_send_sms", { to = ANA, body = ("backup %d.%d"):format(i, k) })
            assert(not r.isError, r.text)
            sent = sent + 1
            if i == 1 and k == 5 then
              -- one page per step: the copy takes many loop turns while the others send
              loop.spawn(function()
                local res, err = cli.admin_call(srv.admin_socket, "server.backup", { path = file, pages = 1 })
                backup = res or { error = err }
                loop.wake(me)
              end)
            end
          end
          done = done + 1
          loop.wake(me)
        end)
      end
      while done < 4 or not backup do loop.wait() end
      for i = 1, 4 do sessions[i]:close() end
    end, 120)
    assert.are.equal(100, sent)
    assert.is_nil(backup.error)
    assert.is_true(backup.steps > 5, "the copy took one step: it did not interleave with the sends")
    assert.are.equal(tonumber("600", 8), fs.mode(file))
    assert.are.equal(tonumber("600", 8), fs.mode(file .. ".head"))
    local calls_before = count(srv, "SELECT count(*) FROM audit_log WHERE kind = 'call'")
    assert.is_true(calls_before >= 100)

    assert.is_true(srv.stop())
    local out, code = restore(srv, file)
    assert.are.equal(0, code, out)
    assert.truthy(out:find("audit trail intact", 1, true), out)
    assert.truthy(out:find("before%-restore"), out)
    local restored_calls = count(srv, "SELECT count(*) FROM audit_log WHERE kind = 'call'")
    assert.is_true(restored_calls < calls_before, "the backup holds the sends made after it")
    assert.are.equal(tonumber("600", 8), fs.mode(srv.dir .. "/data/switchboard.db"))

    srv.start()
    local v, vcode = srv.admin("audit verify")
    assert.are.equal(0, vcode, tostring(v))
    assert.is_true(v.ok, tostring(v.problem))
    -- the records after the backup are gone, and the trail says so
    local warned = false
    for _, w in ipairs(v.warnings or {}) do warned = warned or w:find("anchor reached record", 1, true) ~= nil end
    assert.is_true(warned, "no re-anchoring noted in the trail")
    local r = TW.with(srv, token, function(c) return TW.call(c, "twilio_send_sms", { to = ANA, body = "after" }) end)
    assert.is_not_true(r.isError, r.text)
  end)

  it("without its anchor file still restores, and says what cannot be shown", function()
    local file = srv.dir .. "/noanchor.db"
    local _, code, err = srv.admin("backup " .. H.q(file))
    assert.are.equal(0, code, err)
    os.remove(file .. ".head")
    assert.is_true(srv.stop())
    local out, rcode = restore(srv, file)
    srv.start()
    assert.are.equal(0, rcode, out)
    assert.truthy(out:find("no anchor came with the backup", 1, true), out)
    local v = srv.admin("audit verify")
    assert.is_true(v.ok, tostring(v.problem))
  end)

  it("never overwrites a file and leaves no partial file when refused", function()
    local file = srv.dir .. "/exists.db"
    H.write(file, "keep me")
    local r, code, err = srv.admin("backup " .. H.q(file))
    assert.are.equal(1, code, tostring(r))
    assert.truthy(err:find("exists already", 1, true), err)
    assert.are.equal("keep me", H.read(file))
    local _, code2, err2 = srv.admin("backup " .. H.q(srv.dir .. "/no/such/dir/x.db"))
    assert.are.equal(1, code2)
    assert.truthy(err2:lower():find("no such file", 1, true), err2)
  end)

  it("writes a relative FILE where the command was run, not where the server runs", function()
    local here = H.tmpdir("bkrel")
    local out, code = H.sh(("cd %s && %s admin --config %s backup rel.db 2>&1"):format(H.q(here), H.q(H.BIN),
      H.q(srv.conf)))
    assert.are.equal(0, code, out)
    assert.truthy(H.exists(here .. "/rel.db"))
  end)
end)

describe("switchboard restore", function()
  local srv, file
  setup(function()
    srv = H.server()
    srv.agent("rs", "bot")
    file = srv.dir .. "/good.db"
    local _, code, err = srv.admin("backup " .. H.q(file))
    assert(code == 0, err)
  end)
  teardown(function() srv.stop() end)

  it("refuses while the server runs", function()
    local out, code = restore(srv, file)
    assert.are.equal(1, code, out)
    assert.truthy(out:find("in use", 1, true) and out:find("stop the server first", 1, true), out)
    assert.is_true(srv.admin("status").connections ~= nil)
  end)

  it("refuses a file that is not a Switchboard database, one with an edited record, and a foreign key", function()
    assert.is_true(srv.stop())
    local before = H.read(srv.dir .. "/data/switchboard.db")

    local junk = srv.dir .. "/junk.db"
    H.write(junk, string.rep("x", 8192))
    local out, code = restore(srv, junk)
    assert.are.equal(1, code, out)
    assert.truthy(out:find("not a database", 1, true) or out:find("not a readable", 1, true), out)

    local other = srv.dir .. "/other.db"
    H.sh(("sqlite3 %s 'CREATE TABLE t(x)'"):format(H.q(other)))
    out, code = restore(srv, other)
    assert.are.equal(1, code, out)
    assert.truthy(out:find("not a Switchboard database", 1, true), out)

    local edited = srv.dir .. "/edited.db"
    H.sh(("cp %s %s && sqlite3 %s %s"):format(H.q(file), H.q(edited), H.q(edited),
      H.q("UPDATE audit_log SET actor = 'someone else' WHERE id = 1")))
    out, code = restore(srv, edited)
    assert.are.equal(1, code, out)
    assert.truthy(out:find("does not verify with this master key", 1, true), out)

    -- a backup whose tail was cut after it was taken: its own anchor says so
    local cut = srv.dir .. "/cut.db"
    H.sh(("cp %s %s && cp %s %s && sqlite3 %s %s"):format(H.q(file), H.q(cut), H.q(file .. ".head"),
      H.q(cut .. ".head"), H.q(cut), H.q("DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)")))
    out, code = restore(srv, cut)
    assert.are.equal(1, code, out)
    assert.truthy(out:find("were deleted", 1, true), out)

    local newer = srv.dir .. "/newer.db"
    H.sh(("cp %s %s && sqlite3 %s 'PRAGMA user_version = 999'"):format(H.q(file), H.q(newer), H.q(newer)))
    out, code = restore(srv, newer)
    assert.are.equal(1, code, out)
    assert.truthy(out:find("schema version 999", 1, true), out)

    -- the same backup under another master key: its records do not verify
    local foreign = H.tmpdir("foreign")
    H.write(foreign .. "/conf.lua", ("return { data_dir = %q, master_key_file = %q, audit = { anchor_file = %q } }\n")
      :format(foreign .. "/data", foreign .. "/other.key", foreign .. "/data/audit.head"))
    H.sh(("%s exec /dev/stdin <<'EOF'\nlocal v = require('core.vault')\nassert(v.create_master(%q))\nEOF")
      :format(H.q(H.BIN), foreign .. "/other.key"))
    out, code = H.sh(("%s restore --config %s %s 2>&1"):format(H.q(H.BIN), H.q(foreign .. "/conf.lua"), H.q(file)))
    assert.are.equal(1, code, out)
    assert.truthy(out:find("does not verify with this master key", 1, true), out)
    assert.is_nil(require("lfs").attributes(foreign .. "/data/switchboard.db"))

    -- nothing was replaced, nothing left behind
    assert.are.equal(before, H.read(srv.dir .. "/data/switchboard.db"))
    assert.is_nil(require("lfs").attributes(srv.dir .. "/data/switchboard.db.restoring~"))
    srv.start()
  end)
end)
