-- Master key rotation (security.md requirement 7): `admin vault rotate`
-- adds a key version and rewraps every tenant's data key under it in one
-- transaction while agents send; `admin vault retire VERSION` removes an
-- old version only once nothing uses it, and the old key file then opens
-- nothing. The audit chain verifies throughout (its key does not rotate).
local H = require("helpers")
local TW = require("twilio_env")
local cli = require("switchboard.cli")
local loop = require("core.loop")
local fs = require("core.fs")
local vault = require("core.vault")
local db_mod = require("switchboard.db")
local directory = require("switchboard.directory")

local ANA = TW.SIM.ANA
local FIELD = require("integrations.twilio.connection").FIELD


local function rows(srv, sql)
  return H.sql_rows(srv, sql)
end

local function send(c, body)
  local r = TW.call(c, "twilio_send_sms", { to = ANA, body = body })
  assert(not r.isError, body .. ": " .. tostring(r.text))
  return r
end

describe("vault rotate and retire", function()
  local sim, srv
  local names = { "rot-a", "rot-b", "rot-c" }
  local tokens, sessions = {}, {}
  setup(function()
    sim = TW.sim()
    -- no credential cache: each send opens the tenant's credential with the
    -- data key its session holds, so a session left with a retired key fails
    srv = TW.server({ config = { twilio = { credential_seconds = 0 } } })
    for i, n in ipairs(names) do tokens[i] = TW.connect_sim(srv, sim, n) end
  end)
  teardown(function() srv.stop() sim.stop() end)

  it("rewraps while an agent sends; retire refuses while a version is in use; the old key file is useless", function()
    local key_file = srv.cfg.master_key_file
    local old_file = srv.dir .. "/old.key"
    assert(H.sh(("cp -p %s %s && echo ok"):format(H.q(key_file), H.q(old_file))):find("ok"))
    local old_key = H.read(old_file)
    assert.are.equal(32, #old_key)
    local v1_of_c = rows(srv, "SELECT " .. H.hex_sql(srv, "data_key") .. " AS k FROM tenants WHERE name = 'rot-c'")[1].k

    local rotated, sent_during
    H.async(function()
      for i = 1, 3 do
        sessions[i] = TW.session(srv, tokens[i])
        send(sessions[i], "before " .. i) -- each session holds its tenant's data key wrapped under version 1
      end
      -- one agent sends 20 messages; the rotation runs after its third
      local me, done = coroutine.running(), false
      sent_during = 0
      loop.spawn(function()
        for k = 1, 20 do
          send(sessions[1], "during " .. k)
          sent_during = sent_during + 1
          if k == 3 then
            loop.spawn(function()
              local res, err = cli.admin_call(srv.admin_socket, "vault.rotate", {})
              rotated = res or { error = err, at = sent_during }
              rotated.at = sent_during
              loop.wake(me)
            end)
          end
        end
        done = true
        loop.wake(me)
      end)
      while not (done and rotated) do loop.wait() end
      -- the connected sessions, and new ones, of every tenant still send
      for i = 1, 3 do send(sessions[i], "after rotate " .. i) end
      for i = 1, 3 do
        local c = TW.session(srv, tokens[i])
        send(c, "after rotate, new session " .. i)
        c:close()
      end
    end, 120)
    assert.are.equal(20, sent_during)
    assert.is_nil(rotated.error, tostring(rotated.error))
    assert.is_true(rotated.at < 20, "the rotation did not run while the agent was sending")
    assert.are.equal(2, rotated.version)
    assert.are.equal(1, rotated.previous)
    assert.are.equal(3, rotated.rewrapped)
    assert.are.same({}, rotated.leftovers)
    assert.are.same({ 1, 2 }, rotated.versions)
    assert.are.equal(tonumber("600", 8), fs.mode(key_file))
    local prefixes = "SELECT name, data_key_version AS v, " .. H.hex_sql(srv, "substr(data_key, 1, 4)")
      .. " AS p FROM tenants"
    for _, r in ipairs(rows(srv, prefixes)) do
      assert.are.equal(2, r.v, r.name)
      assert.are.equal("00000002", r.p, r.name)
    end

    -- a tenant row still wrapped under version 1 (as a restore from before
    -- the rotation would leave it): retire refuses, naming it and the count
    TW.sql(srv, ("UPDATE tenants SET data_key = %s, data_key_version = 1 WHERE name = 'rot-c'")
      :format(H.blob_sql(srv, v1_of_c)))
    local out, code = srv.admin_text("vault retire 1")
    assert.are.equal(1, code, out)
    assert.truthy(out:find("key version 1 is still in use: it wraps the data keys of 1 tenant (rot-c)", 1, true), out)
    local _, pcode, perr = srv.admin("vault retire 2")
    assert.are.equal(1, pcode)
    assert.truthy(perr:find("version 2 is the primary key", 1, true), perr)
    local probe = assert(vault.load_master(key_file))
    assert.are.same({ 1, 2 }, (probe:versions()))
    probe:close()

    -- a second rotation picks up the leftover, then both old versions retire
    local r2, code2, err2 = srv.admin("vault rotate")
    assert.are.equal(0, code2, err2)
    assert.are.equal(3, r2.version)
    assert.are.equal(3, r2.rewrapped)
    assert.are.same({}, r2.leftovers)
    local text = srv.admin_text("vault retire 1")
    assert.truthy(text:find("master key version 1 retired", 1, true), text)
    local r3, code3, err3 = srv.admin("vault retire 2")
    assert.are.equal(0, code3, err3)
    assert.are.same({ 3 }, r3.versions)
    local _, ucode, uerr = srv.admin("vault retire 1")
    assert.are.equal(1, ucode)
    assert.truthy(uerr:find("holds no version 1", 1, true), uerr)

    -- the key file holds only version 3: the old key's bytes are gone
    local now = H.read(key_file)
    assert.are.equal(6 + 32 + 36, #now)
    assert.is_nil(now:find(old_key, 1, true))

    -- every tenant still sends, on a connected and on a new session
    H.async(function()
      for i = 1, 3 do
        send(sessions[i], "after retire, connected since before the rotation " .. i)
        sessions[i]:close()
        local c = TW.session(srv, tokens[i])
        send(c, "after retire " .. i)
        c:close()
      end
    end, 60)

    -- the rotation is audited (who, versions; never key material) and the trail verifies
    local changes = rows(srv, "SELECT action, actor, params FROM audit_log WHERE kind = 'setting'"
      .. " AND action LIKE 'vault.%' ORDER BY id")
    local actions = {}
    for _, c in ipairs(changes) do
      actions[#actions + 1] = c.action
      assert.truthy(c.actor:find("^uid "), c.actor)
    end
    assert.are.same({ "vault.rotate", "vault.rotate", "vault.retire", "vault.retire" }, actions)
    assert.truthy(changes[3].params:find('"retired":1', 1, true), changes[3].params)
    local dump = H.dump(srv)
    assert.is_nil(dump:upper():find(vault.hex(old_key):upper(), 1, true))
    local server_log = H.read(srv.log) .. (H.read(srv.stderr) or "")
    assert.is_nil(server_log:find(vault.hex(old_key), 1, true))
    local v, vcode = srv.admin("audit verify --full")
    assert.are.equal(0, vcode, tostring(v))
    assert.is_true(v.ok, tostring(v.problem))

    -- with the server stopped: the old key file opens no tenant's data, the
    -- current one does; the restarted server serves from the key set alone
    assert.is_true(srv.stop())
    local old = assert(vault.load_master(old_file))
    local cur = assert(vault.load_master(key_file))
    H.with_store(srv, function(db)
      local tenants = assert(db:query("SELECT t.id, t.name, t.data_key, c.secret FROM tenants t"
        .. " JOIN connections c ON c.tenant_id = t.id"))
      assert.are.equal(3, #tenants)
      for _, t in ipairs(tenants) do
        assert.are.same({ nil, "decryption failed" }, { directory.open(old, t, FIELD, t.secret) })
        assert.is_nil((old:rewrap(t.data_key, directory.key_context(t.id))))
        assert.are.equal(TW.SIM.MAIN[2], directory.open(cur, t, FIELD, t.secret), t.name)
      end
    end)
    old:close()
    cur:close()
    srv.start()
    H.async(function()
      local c = TW.session(srv, tokens[2])
      send(c, "after restart")
      c:close()
    end, 60)
    v = srv.admin("audit verify --full")
    assert.is_true(v.ok, tostring(v.problem))
  end)

  it("tells people what it did, and what to run next", function()
    local out, code = srv.admin_text("vault rotate")
    assert.are.equal(0, code, out)
    assert.truthy(out:find("master key version 4 is the primary (versions held: 3, 4); 3 tenant data keys rewrapped",
      1, true), out)
    assert.truthy(out:find("`switchboard admin vault retire 3` removes it", 1, true), out)
    out, code = srv.admin_text("vault retire 3")
    assert.are.equal(0, code, out)
    assert.truthy(out:find("master key version 3 retired: removed from the key file and from memory (versions held: 4)",
      1, true), out)
  end)

  it("refuses bad versions with the rule", function()
    local _, code, err = srv.admin("vault retire x")
    assert.are.equal(1, code)
    assert.truthy(err:find("'version' must be a whole number", 1, true), err)
    _, code, err = srv.admin("vault retire 0")
    assert.are.equal(1, code)
    assert.truthy(err:find("'version' must be a whole number", 1, true), err)
  end)
end)

describe("directory.rewrap_all", function()
  it("rewraps in one transaction and reports a data key it cannot open as a leftover", function()
    local dir = H.tmpdir("rewrap")
    local path = dir .. "/master.key"
    assert(vault.create_master(path))
    local m <close> = assert(vault.load_master(path))
    local db = assert(db_mod.open(dir .. "/db.sqlite"))
    local a = assert(directory.add_tenant(db, m, "a"))
    local b = assert(directory.add_tenant(db, m, "b"))
    assert.are.equal(1, a.data_key_version)
    local sealed = assert(directory.seal(m, a, "f", "kept"))
    -- b's wrapped key is damaged (one bit): it cannot be rewrapped
    local dk = b.data_key
    local damaged = dk:sub(1, 10) .. string.char(dk:byte(11) ~ 1) .. dk:sub(12)
    assert(db:run("UPDATE tenants SET data_key = ? WHERE id = ?", require("core.store").blob(damaged), b.id))
    assert.are.equal(2, m:rotate(path))
    local r = assert(directory.rewrap_all(db, m))
    assert.are.equal(2, r.version)
    assert.are.equal(1, r.count)
    assert.are.equal(1, #r.failed)
    assert.are.equal("b", r.failed[1].tenant)
    assert.are.equal(1, r.failed[1].version)
    assert.are.equal("decryption failed", r.failed[1].why)
    local a2 = directory.tenant_by_id(db, a.id)
    assert.are.equal(2, a2.data_key_version)
    assert.are.equal("kept", directory.open(m, a2, "f", sealed))
    assert.are.same({ "b" }, directory.tenants_on_version(db, m, 1))
    assert.are.same({ "a" }, directory.tenants_on_version(db, m, 2))
    -- a new tenant is wrapped under the primary version
    local c = assert(directory.add_tenant(db, m, "c"))
    assert.are.equal(2, c.data_key_version)
    assert.are.equal(2, m:key_version(c.data_key))
    db:close()
    H.sh("rm -rf " .. H.q(dir))
  end)
end)
