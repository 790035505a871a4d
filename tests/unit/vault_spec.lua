-- core.vault: envelope encryption, master key file rules, credentials.
-- Run: ./switchboard exec /usr/bin/busted tests/unit/vault_spec.lua
local vault = require "core.vault"

local function tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -m 700 " .. path))
  return path
end

local function sh(cmd)
  return os.execute(cmd .. " 2>/dev/null")
end

-- flip one bit of byte i (1-based)
local function flip(s, i, bit)
  local b = s:byte(i) ~ (1 << (bit or 0))
  return s:sub(1, i - 1) .. string.char(b) .. s:sub(i + 1)
end

local FAIL = "decryption failed"

describe("core.vault", function()
  local dir, master, other_master, wk

  setup(function()
    dir = tmpdir()
    assert.is_true(vault.create_master(dir .. "/master.key"))
    assert.is_true(vault.create_master(dir .. "/other.key"))
    master = assert(vault.load_master(dir .. "/master.key"))
    other_master = assert(vault.load_master(dir .. "/other.key"))
    wk = assert(master:new_data_key("tenant-1"))
  end)

  teardown(function()
    master:close()
    other_master:close()
    sh("rm -rf " .. dir)
  end)

  describe("master key file", function()
    local function write_key(name, n, mode)
      local path = dir .. "/" .. name
      local f = assert(io.open(path, "wb"))
      f:write(string.rep("k", n))
      f:close()
      assert(sh("chmod " .. mode .. " " .. path))
      return path
    end

    it("is created with mode 0600 and 32 bytes", function()
      local out = io.popen("stat -c '%a %s' " .. dir .. "/master.key")
      local line = out:read("l")
      out:close()
      assert.equal("600 32", line)
    end)

    it("is never overwritten by create_master", function()
      local path = dir .. "/master.key"
      local before = io.open(path, "rb"):read("a")
      local ok, err = vault.create_master(path)
      assert.is_nil(ok)
      assert.matches("already exists", err, 1, true)
      assert.equal(before, io.open(path, "rb"):read("a"))
    end)

    it("refuses mode 0644", function()
      local m, err = vault.load_master(write_key("k644", 32, "644"))
      assert.is_nil(m)
      assert.matches("mode 0644 lets group or others read it; chmod 600", err, 1, true)
    end)

    it("refuses mode 0640", function()
      local m, err = vault.load_master(write_key("k640", 32, "640"))
      assert.is_nil(m)
      assert.matches("mode 0640 lets group or others read it", err, 1, true)
    end)

    it("refuses mode 0601 (others may write)", function()
      local m, err = vault.load_master(write_key("k601", 32, "601"))
      assert.is_nil(m)
      assert.matches("mode 0601 lets group or others access it", err, 1, true)
    end)

    it("accepts mode 0400", function()
      local m = assert(vault.load_master(write_key("k400", 32, "400")))
      m:close()
    end)

    it("refuses a symlink", function()
      assert(sh("ln -s " .. dir .. "/master.key " .. dir .. "/link.key"))
      local m, err = vault.load_master(dir .. "/link.key")
      assert.is_nil(m)
      assert.matches("symbolic link", err, 1, true)
    end)

    it("refuses a wrong size", function()
      local m, err = vault.load_master(write_key("short", 31, "600"))
      assert.is_nil(m)
      assert.matches("size is 31 bytes, must be exactly 32", err, 1, true)
      m, err = vault.load_master(write_key("long", 33, "600"))
      assert.is_nil(m)
      assert.matches("size is 33 bytes", err, 1, true)
    end)

    it("refuses a missing file", function()
      local m, err = vault.load_master(dir .. "/nope.key")
      assert.is_nil(m)
      assert.matches("master key file .*/nope.key: No such file", err)
    end)

    it("refuses a directory", function()
      assert(sh("mkdir -m 700 " .. dir .. "/d"))
      local m, err = vault.load_master(dir .. "/d")
      assert.is_nil(m)
      assert.matches("not a regular file", err, 1, true)
    end)

    it("refuses a file owned by another uid (as root)", function()
      local out = io.popen("id -u")
      local uid = out:read("l")
      out:close()
      if uid ~= "0" then
        pending("needs root to chown")
        return
      end
      local path = write_key("nobody.key", 32, "600")
      assert(sh("chown nobody " .. path))
      local m, err = vault.load_master(path)
      assert.is_nil(m)
      assert.matches("owned by uid %d+, not by this process's uid 0; chown it", err)
    end)

    it("closes idempotently and raises after close", function()
      local m = assert(vault.load_master(dir .. "/master.key"))
      m:close()
      m:close()
      assert.equal("core.vault.Master (closed)", tostring(m))
      assert.has_error(function() m:new_data_key("t") end,
        "attempt to use a closed master key")
    end)
  end)

  describe("seal and open", function()
    local blob

    before_each(function()
      blob = assert(master:seal(wk, "tenant-1", "auth_token", "s3cret-value"))
    end)

    it("round-trips", function()
      assert.equal("s3cret-value", master:open(wk, "tenant-1", "auth_token", blob))
      for _, pt in ipairs({ "", "x", string.rep("a", 15), string.rep("b", 16),
                            string.rep("c", 17), string.rep("\0", 1000) }) do
        local b = assert(master:seal(wk, "tenant-1", "f", pt))
        assert.equal(pt, master:open(wk, "tenant-1", "f", b))
      end
    end)

    it("uses the v1 layout", function()
      assert.equal(1, blob:byte(1))
      assert.equal(1, blob:byte(2))
      -- header 2 + IV 16 + one padded block 16 + tag 32
      assert.equal(2 + 16 + 16 + 32, #blob)
      -- the wrapped key: the 4-byte version prefix, then the v1 blob
      assert.equal(4 + 2 + 16 + 48 + 32, #wk)
      assert.equal("\0\0\0\1", wk:sub(1, 4))
    end)

    it("uses a fresh IV each time", function()
      local b2 = master:seal(wk, "tenant-1", "auth_token", "s3cret-value")
      assert.not_equal(blob, b2)
    end)

    it("fails the same way for a bit flipped anywhere", function()
      -- header (version, alg), IV, ciphertext, tag: every byte, two bits each
      for i = 1, #blob do
        for _, bit in ipairs({ 0, 7 }) do
          local pt, err = master:open(wk, "tenant-1", "auth_token", flip(blob, i, bit))
          assert.is_nil(pt)
          assert.equal(FAIL, err)
        end
      end
    end)

    it("fails the same way for truncation and appended bytes", function()
      for n = 0, #blob - 1 do
        local pt, err = master:open(wk, "tenant-1", "auth_token", blob:sub(1, n))
        assert.is_nil(pt)
        assert.equal(FAIL, err)
      end
      for _, extra in ipairs({ "\0", string.rep("x", 16), string.rep("y", 32) }) do
        local pt, err = master:open(wk, "tenant-1", "auth_token", blob .. extra)
        assert.is_nil(pt)
        assert.equal(FAIL, err)
      end
    end)

    it("fails the same way for the wrong tenant or field", function()
      local wk2 = assert(master:new_data_key("tenant-2"))
      local cases = {
        { wk, "tenant-2", "auth_token" },
        { wk, "tenant-1", "api_secret" },
        { wk, "tenant-1", "auth_tokenx" },
        -- length prefixes keep these apart
        { wk, "tenant-1a", "uth_token" },
        { wk2, "tenant-2", "auth_token" },
        { wk2, "tenant-1", "auth_token" },
      }
      for _, c in ipairs(cases) do
        local pt, err = master:open(c[1], c[2], c[3], blob)
        assert.is_nil(pt)
        assert.equal(FAIL, err)
      end
    end)

    it("fails the same way for another data key of the same tenant", function()
      local wk_other = assert(master:new_data_key("tenant-1"))
      local pt, err = master:open(wk_other, "tenant-1", "auth_token", blob)
      assert.is_nil(pt)
      assert.equal(FAIL, err)
    end)

    it("fails the same way under another master key", function()
      local pt, err = other_master:open(wk, "tenant-1", "auth_token", blob)
      assert.is_nil(pt)
      assert.equal(FAIL, err)
    end)

    it("fails the same way for a tampered or garbage wrapped key", function()
      for _, bad in ipairs({ flip(wk, 1), flip(wk, 20), flip(wk, #wk), wk:sub(1, -2),
                             wk .. "x", "", "garbage" }) do
        local pt, err = master:open(bad, "tenant-1", "auth_token", blob)
        assert.is_nil(pt)
        assert.equal(FAIL, err)
      end
      local b, err = master:seal(flip(wk, 30), "tenant-1", "f", "x")
      assert.is_nil(b)
      assert.equal(FAIL, err)
    end)

    it("does not accept a wrapped key as a field blob", function()
      -- the wrapped key is sealed under the master key with field "data-key"
      local pt, err = master:open(wk, "tenant-1", "data-key", wk)
      assert.is_nil(pt)
      assert.equal(FAIL, err)
    end)

    it("raises on misuse", function()
      assert.has_error(function() master:open(wk, "tenant-1", "f") end)
      assert.has_error(function() master:seal(wk, "tenant-1", "f", {}) end)
      assert.has_error(function() master.open({}, wk, "t", "f", blob) end)
    end)
  end)

  describe("credential", function()
    local blob
    local SECRET = "the-auth-token-0123456789abcdef"
    local USER = "SK0123456789abcdef0123456789ab1234"

    before_each(function()
      blob = assert(master:seal(wk, "tenant-1", "auth_token", SECRET))
    end)

    it("keeps the secret out of Lua", function()
      local cred = assert(master:credential(wk, "tenant-1", "auth_token", blob, USER))
      assert.equal("core.vault.Credential (SK…1234)", tostring(cred))
      assert.equal("SK…1234", cred:hint())
      assert.equal(USER, cred:username())
      assert.is_nil(tostring(cred):find(SECRET, 1, true))
      -- no method or field gives the secret back
      local mt = getmetatable(cred)
      assert.equal("locked", mt)
      for _, name in ipairs({ "secret", "password", "token", "value", "get" }) do
        assert.is_nil(cred[name])
      end
      cred:close()
    end)

    it("fails like open on tampering", function()
      local cred, err = master:credential(wk, "tenant-2", "auth_token", blob, USER)
      assert.is_nil(cred)
      assert.equal(FAIL, err)
      cred, err = master:credential(wk, "tenant-1", "auth_token", flip(blob, 40), USER)
      assert.is_nil(cred)
      assert.equal(FAIL, err)
    end)

    it("closes idempotently and raises after close", function()
      local cred = assert(master:credential(wk, "tenant-1", "auth_token", blob, USER))
      cred:close()
      cred:close()
      assert.equal("core.vault.Credential (closed)", tostring(cred))
      assert.has_error(function() cred:hint() end, "attempt to use a closed credential")
      assert.has_error(function() cred:username() end, "attempt to use a closed credential")
    end)

    it("works as a to-be-closed variable", function()
      local c
      do
        local cred <close> = assert(master:credential(wk, "tenant-1", "auth_token", blob, USER))
        c = cred
      end
      assert.equal("core.vault.Credential (closed)", tostring(c))
    end)

    it("hides short usernames entirely", function()
      local cred = assert(master:credential(wk, "tenant-1", "auth_token", blob, "bob"))
      assert.equal("…", cred:hint())
      cred:close()
    end)

    it("opens basic, bearer and header kinds, each naming the header it sets", function()
      local basic = assert(master:credential(wk, "tenant-1", "auth_token", blob,
        { kind = "basic", username = USER }))
      assert.same({ "basic", "Authorization" }, { basic:kind() })
      assert.equal(USER, basic:username())
      assert.equal("core.vault.Credential (SK…1234)", tostring(basic))
      basic:close()
      -- the string form is kind basic
      local legacy = assert(master:credential(wk, "tenant-1", "auth_token", blob, USER))
      assert.same({ "basic", "Authorization" }, { legacy:kind() })
      legacy:close()
      local bearer = assert(master:credential(wk, "tenant-1", "auth_token", blob,
        { kind = "bearer", id = "key-0123456789-wxyz" }))
      assert.same({ "bearer", "Authorization" }, { bearer:kind() })
      assert.is_nil(bearer:username())
      assert.equal("ke…wxyz", bearer:hint())
      assert.equal("core.vault.Credential (bearer, ke…wxyz)", tostring(bearer))
      bearer:close()
      local header = assert(master:credential(wk, "tenant-1", "auth_token", blob,
        { kind = "header", header = "X-Api-Key" }))
      assert.same({ "header", "X-Api-Key" }, { header:kind() })
      assert.equal("…", header:hint())
      assert.equal("core.vault.Credential (header, …)", tostring(header))
      header:close()
      assert.equal("core.vault.Credential (closed)", tostring(header))
      assert.has_error(function() header:kind() end, "attempt to use a closed credential")
    end)

    it("keeps the secret of every kind out of every Lua value", function()
      for _, desc in ipairs({ USER, { kind = "bearer" }, { kind = "header", header = "X-Key", id = USER } }) do
        local cred = assert(master:credential(wk, "tenant-1", "auth_token", blob, desc))
        local seen = { tostring(cred), cred:hint(), tostring(cred:username()), table.concat({ cred:kind() }, " ") }
        for _, v in ipairs(seen) do assert.is_nil(v:find(SECRET, 1, true)) end
        for _, name in ipairs({ "secret", "password", "token", "value", "get", "header" }) do
          assert.is_nil(cred[name])
        end
        cred:close()
      end
    end)

    it("raises a clear error for a wrong kind or description", function()
      local function err_of(desc)
        local ok, e = pcall(master.credential, master, wk, "tenant-1", "auth_token", blob, desc)
        assert.is_false(ok)
        assert.is_nil(tostring(e):find(SECRET, 1, true))
        return tostring(e)
      end
      assert.matches([[credential kind: 'digest' is not one of "basic", "bearer", "header"]],
        err_of({ kind = "digest" }), 1, true)
      assert.matches("credential kind: required", err_of({ username = USER }), 1, true)
      assert.matches("credential username: required for kind \"basic\"", err_of({ kind = "basic" }), 1, true)
      assert.matches("credential username: only for kind \"basic\"",
        err_of({ kind = "bearer", username = USER }), 1, true)
      assert.matches("credential header: required for kind \"header\"", err_of({ kind = "header" }), 1, true)
      assert.matches("credential header: only for kind \"header\"",
        err_of({ kind = "bearer", header = "X-Key" }), 1, true)
      assert.matches("credential: unknown field 'secret'", err_of({ kind = "bearer", secret = "x" }), 1, true)
      assert.matches("credential kind: expected a string", err_of({ kind = 1 }), 1, true)
      assert.matches("username string or credential table", err_of(42), 1, true)
      assert.matches("credential username: contains a NUL byte", err_of("a\0b"), 1, true)
    end)

    it("refuses a header name that is not a token, or is reserved", function()
      local function err_of(name)
        local ok, e = pcall(master.credential, master, wk, "tenant-1", "auth_token", blob,
          { kind = "header", header = name })
        assert.is_false(ok)
        return tostring(e)
      end
      for _, bad in ipairs({ "", "X-Key\r\nHost: evil", "X Key", "X:Key", "X-Key\0", ("x"):rep(65) }) do
        assert.matches("credential header: ", err_of(bad), 1, true)
      end
      assert.matches("must be an HTTP token", err_of("X-Key\r\nHost: evil"), 1, true)
      for _, reserved in ipairs({ "Authorization", "authorization", "Host", "COOKIE", "Proxy-Authorization",
                                  "Content-Length", "Transfer-Encoding", "Connection", "Expect" }) do
        assert.matches("is reserved", err_of(reserved), 1, true)
      end
    end)

    it("refuses a bearer or header secret that cannot go in a header, without showing it", function()
      for _, bad in ipairs({ "tok\r\nX-Evil: 1", "tok en", " tok", "tok\n", "", "tok\0en", "t\1ok" }) do
        local b = assert(master:seal(wk, "tenant-1", "auth_token", bad))
        local cred, err = master:credential(wk, "tenant-1", "auth_token", b, { kind = "bearer" })
        assert.is_nil(cred)
        assert.equal("credential secret: not a valid bearer value", err)
        if bad ~= "tok en" then
          cred, err = master:credential(wk, "tenant-1", "auth_token", b, { kind = "header", header = "X-Key" })
          assert.is_nil(cred)
          assert.equal("credential secret: not a valid header value", err)
        end
      end
      -- inner spaces are a valid header value, not a bearer token
      local b = assert(master:seal(wk, "tenant-1", "auth_token", "tok en"))
      local cred = assert(master:credential(wk, "tenant-1", "auth_token", b, { kind = "header", header = "X-Key" }))
      cred:close()
      -- a wrong blob still fails as decryption, whatever the kind
      local c2, err = master:credential(wk, "tenant-2", "auth_token", blob, { kind = "bearer" })
      assert.is_nil(c2)
      assert.equal(FAIL, err)
    end)
  end)

  describe("helpers", function()
    it("random", function()
      assert.equal(0, #vault.random(0))
      assert.equal(32, #vault.random(32))
      assert.not_equal(vault.random(16), vault.random(16))
      assert.has_error(function() vault.random(-1) end)
    end)

    it("token", function()
      local t = vault.token("sbk_")
      assert.equal(4 + 43, #t)
      assert.matches("^sbk_[A-Za-z0-9_-]+$", t)
      assert.not_equal(t, vault.token("sbk_"))
      assert.matches("^[A-Za-z0-9_-]+$", vault.token(""))
      assert.equal(43, #vault.token(""))
    end)

    it("sha256 and sha256_hex", function()
      assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        vault.sha256_hex("abc"))
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        vault.sha256_hex(""))
      assert.equal(32, #vault.sha256("abc"))
      assert.equal(vault.sha256_hex("abc"), vault.hex(vault.sha256("abc")))
    end)

    it("hmac_sha256 (RFC 4231 case 2)", function()
      assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        vault.hex(vault.hmac_sha256("Jefe", "what do ya want for nothing?")))
    end)

    it("equal", function()
      assert.is_true(vault.equal("abc", "abc"))
      assert.is_true(vault.equal("", ""))
      assert.is_false(vault.equal("abc", "abd"))
      assert.is_false(vault.equal("abc", "ab"))
      assert.is_false(vault.equal("ab", "abc"))
      assert.is_false(vault.equal("", "a"))
      assert.has_error(function() vault.equal("a") end)
    end)

    it("hex and base64url", function()
      assert.equal("00ff10", vault.hex("\0\255\16"))
      assert.equal("", vault.base64url(""))
      assert.equal("Zg", vault.base64url("f"))
      assert.equal("Zm8", vault.base64url("fo"))
      assert.equal("Zm9v", vault.base64url("foo"))
      assert.equal("-_8", vault.base64url("\251\255"))
    end)
  end)
  describe("audit MAC", function()
    it("is HMAC-SHA256 under HKDF(master key, info 'switchboard v1 audit'), the key never shown", function()
      local key = assert(io.open(dir .. "/master.key", "rb")):read("a")
      local out = io.popen("openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:" .. vault.hex(key)
        .. " -kdfopt info:'switchboard v1 audit' HKDF")
      local hex = out:read("a"):gsub("[:%s]", ""):lower()
      out:close()
      assert.equal(64, #hex)
      local akey = hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
      local data = "switchboard audit v1\n0000\n[\"i:1\"]"
      local mac = master:audit_mac(data)
      assert.equal(vault.hex(vault.hmac_sha256(akey, data)), mac)
      assert.equal(mac, master:audit_mac(data))
      assert.are_not.equal(mac, other_master:audit_mac(data))
      assert.are_not.equal(mac, master:audit_mac(data .. " "))
      -- neither the master key nor the audit key is a MAC of anything obvious
      assert.are_not.equal(vault.hex(key), mac)
      assert.are_not.equal(hex, mac)
    end)

    it("refuses a closed master key", function()
      local m = assert(vault.load_master(dir .. "/other.key"))
      m:close()
      assert.has_error(function() m:audit_mac("x") end, "attempt to use a closed master key")
    end)
  end)

  describe("key versions", function()
    local kdir
    local function read(path) return assert(io.open(path, "rb")):read("a") end
    local function stat(path)
      local out = io.popen("stat -c '%a %s' " .. path)
      local line = out:read("l")
      out:close()
      return line
    end

    before_each(function()
      kdir = tmpdir()
      assert.is_true(vault.create_master(kdir .. "/master.key"))
    end)
    after_each(function() sh("rm -rf " .. kdir) end)

    it("rotate adds a primary version, rewrap moves a data key to it, retire wipes the old one", function()
      local path = kdir .. "/master.key"
      local m <close> = assert(vault.load_master(path))
      local v1 = read(path)
      local mac = m:audit_mac("chain")
      local w1, ver = m:new_data_key("tenant:1")
      assert.equal(1, ver)
      assert.equal(1, m:key_version(w1))
      local sealed = assert(m:seal(w1, "tenant:1", "f", "secret"))
      assert.same({ 1 }, (m:versions()))

      assert.equal(2, m:rotate(path))
      local held, primary = m:versions()
      assert.same({ 1, 2 }, held)
      assert.equal(2, primary)
      -- the key set: header 6, audit key 32, two entries of 4 + 32
      assert.equal("600 " .. (6 + 32 + 2 * 36), stat(path))
      assert.is_nil(io.open(path .. ".tmp", "rb"))
      local set = read(path)
      assert.truthy(set:find(v1, 1, true), "version 1 is still in the key set")
      -- the old version still opens; new keys are wrapped under the new one
      assert.equal("secret", m:open(w1, "tenant:1", "f", sealed))
      local wn, vn = m:new_data_key("tenant:2")
      assert.equal(2, vn)
      assert.equal("\0\0\0\2", wn:sub(1, 4))
      -- rewrap: the same data key under version 2, bound to its tenant
      local w2, v = assert(m:rewrap(w1, "tenant:1"))
      assert.equal(2, v)
      assert.equal(2, m:key_version(w2))
      assert.equal("secret", m:open(w2, "tenant:1", "f", sealed))
      assert.same({ nil, FAIL }, { m:rewrap(w1, "tenant:9") })
      -- the audit key does not change
      assert.equal(mac, m:audit_mac("chain"))

      assert.is_true(m:retire(path, 1))
      assert.same({ 2 }, (m:versions()))
      assert.equal("600 " .. (6 + 32 + 36), stat(path))
      assert.is_nil(read(path):find(v1, 1, true), "version 1 is gone from the file")
      assert.same({ nil, FAIL }, { m:open(w1, "tenant:1", "f", sealed) })
      assert.same({ nil, FAIL }, { m:rewrap(w1, "tenant:1") })
      assert.equal("secret", m:open(w2, "tenant:1", "f", sealed))
      assert.equal(mac, m:audit_mac("chain"))

      -- reloaded: the same versions and audit key
      local again <close> = assert(vault.load_master(path))
      assert.same({ 2 }, (again:versions()))
      assert.equal("secret", again:open(w2, "tenant:1", "f", sealed))
      assert.equal(mac, again:audit_mac("chain"))
      -- the old key file opens nothing wrapped under version 2
      local old = kdir .. "/old.key"
      local f = assert(io.open(old, "wb"))
      f:write(v1)
      f:close()
      assert(sh("chmod 600 " .. old))
      local om <close> = assert(vault.load_master(old))
      assert.same({ nil, FAIL }, { om:open(w2, "tenant:1", "f", sealed) })
      assert.same({ nil, FAIL }, { om:rewrap(w2, "tenant:1") })
    end)

    it("retire refuses the primary and an unknown version, the file unchanged", function()
      local path = kdir .. "/master.key"
      local m <close> = assert(vault.load_master(path))
      local ok, err = m:retire(path, 1)
      assert.is_nil(ok)
      assert.truthy(err:find("version 1 is the primary key", 1, true), err)
      assert.equal(2, m:rotate(path))
      local before = read(path)
      ok, err = m:retire(path, 7)
      assert.is_nil(ok)
      assert.truthy(err:find("holds no key version 7", 1, true), err)
      assert.is_nil((m:retire(path, 2)))
      assert.equal(before, read(path))
      assert.same({ 1, 2 }, (m:versions()))
    end)

    it("rotate that cannot write the file changes nothing", function()
      local path = kdir .. "/master.key"
      local m <close> = assert(vault.load_master(path))
      local w = m:new_data_key("t")
      local ok, err = m:rotate(kdir .. "/no/such/dir/master.key")
      assert.is_nil(ok)
      assert.truthy(err:find("No such file or directory", 1, true), err)
      assert.same({ 1 }, (m:versions()))
      assert.equal(1, select(2, m:new_data_key("t")))
      assert.equal(w:sub(1, 4), (m:new_data_key("t")):sub(1, 4))
    end)

    it("holds at most 16 versions", function()
      local path = kdir .. "/master.key"
      local m <close> = assert(vault.load_master(path))
      for v = 2, 16 do assert.equal(v, m:rotate(path)) end
      local ok, err = m:rotate(path)
      assert.is_nil(ok)
      assert.truthy(err:find("holds 16 key versions", 1, true), err)
      assert.is_true(m:retire(path, 3))
      assert.equal(17, m:rotate(path))
      local again <close> = assert(vault.load_master(path))
      local held = again:versions()
      assert.equal(16, #held)
      assert.equal(17, held[16])
    end)

    it("refuses a damaged key set", function()
      local path = kdir .. "/master.key"
      local m <close> = assert(vault.load_master(path))
      assert.equal(2, m:rotate(path))
      local set = read(path)
      local function try(bytes)
        local p = kdir .. "/bad.key"
        local f = assert(io.open(p, "wb"))
        f:write(bytes)
        f:close()
        assert(sh("chmod 600 " .. p))
        local ok, err = vault.load_master(p)
        assert.is_nil(ok)
        return err
      end
      assert.truthy(try("XBMK" .. set:sub(5)):find("neither a 32-byte key nor a key set", 1, true))
      assert.truthy(try(set:sub(1, 5) .. "\3" .. set:sub(7)):find("count of versions", 1, true))
      -- version 2 then 1: not increasing
      local swapped = set:sub(1, 38) .. set:sub(75, 110) .. set:sub(39, 74)
      assert.truthy(try(swapped):find("increasing", 1, true))
      assert.truthy(try(set .. "x"):find("count of versions", 1, true))
      assert.truthy(try(set:sub(1, 38) .. "\0\0\0\0" .. set:sub(43)):find("increasing", 1, true))
    end)

    it("key_version reads the prefix, a bare v1 blob is version 1, anything else nil", function()
      local m <close> = assert(vault.load_master(kdir .. "/master.key"))
      local w = m:new_data_key("t")
      assert.equal(1, m:key_version(w))
      assert.equal(1, m:key_version(w:sub(5)))
      assert.equal(0x01020304, m:key_version("\1\2\3\4" .. w:sub(5)))
      assert.is_nil(m:key_version("short"))
      -- a bare blob (from before versions) still opens under version 1
      local sealed = m:seal(w, "t", "f", "x")
      assert.equal("x", m:open(w:sub(5), "t", "f", sealed))
      -- a prefix naming another version does not open
      assert.same({ nil, FAIL }, { m:open("\0\0\0\2" .. w:sub(5), "t", "f", sealed) })
    end)
  end)

  describe("write_private", function()
    it("replaces a file atomically with mode 0600 and leaves no temporary file", function()
      local path = dir .. "/anchor"
      assert.is_true(vault.write_private(path, "one\n"))
      assert.equal("one\n", assert(io.open(path, "rb")):read("a"))
      assert(sh("chmod 644 " .. path))
      assert.is_true(vault.write_private(path, "two\n"))
      assert.equal("two\n", assert(io.open(path, "rb")):read("a"))
      local st = io.popen("stat -c %a " .. path)
      assert.equal("600", st:read("l"))
      st:close()
      assert.is_nil(io.open(path .. ".tmp", "rb"))
    end)

    it("replaces a symbolic link instead of writing through it", function()
      local target, path = dir .. "/target", dir .. "/link"
      assert(io.open(target, "wb")):close()
      assert(sh("ln -s " .. target .. " " .. path))
      assert.is_true(vault.write_private(path, "x"))
      assert.equal("", assert(io.open(target, "rb")):read("a"))
      local out = io.popen("stat -c %F " .. path)
      assert.equal("regular file", out:read("l"))
      out:close()
    end)

    it("gives the path and the reason when it cannot write", function()
      local ok, err = vault.write_private(dir .. "/no/such/dir/anchor", "x")
      assert.is_nil(ok)
      assert.truthy(err:find("no/such/dir/anchor.tmp: No such file or directory", 1, true), err)
      assert.has_error(function() vault.write_private("a\0b", "x") end)
    end)
  end)
end)
