-- Operations: `make install` into a scratch DESTDIR gives a relocatable
-- installation that finds its files from its own prefix; the installed
-- binary started with socket activation (systemd-socket-activate passes
-- LISTEN_FDS/LISTEN_FDNAMES) and a test notification socket reports
-- READY=1, serves an agent session on the socket it was given, reports
-- RELOADING=1 and WATCHDOG=1, and STOPPING=1 on SIGTERM, never
-- re-creating or removing the sockets it was passed.
local H = require("helpers")
local json = require("switchboard.json")
local lfs = require("lfs")

local function inode(path)
  return lfs.attributes(path, "ino")
end

-- The datagrams the notification socket received, in order.
local function notes(file)
  local out = {}
  for block in ((H.read(file) or "")):gmatch("(.-)\n%-%-\n") do out[#out + 1] = block end
  return out
end

local function has_note(file, pattern)
  for _, n in ipairs(notes(file)) do
    if n:find(pattern) then return n end
  end
  return nil
end

describe("make install", function()
  local dest, prefix, bin
  setup(function()
    dest = H.tmpdir("dest")
    prefix = dest .. "/usr/local"
    bin = prefix .. "/bin/switchboard"
    local out, code = H.sh(("make -s -C %s install DESTDIR=%s PREFIX=/usr/local 2>&1"):format(H.q(H.ROOT), H.q(dest)))
    assert(code == 0, "make install failed:\n" .. out)
  end)

  it("puts the binary, the Lua runtime, tools, policies, pages, units and config under the prefix", function()
    for _, f in ipairs({ "bin/switchboard", "share/switchboard/runtime.lua",
        "share/switchboard/lua/switchboard/cli.lua", "share/switchboard/integrations/twilio/tools/send_sms.lua",
        "share/switchboard/policies/safety_gateway.lua", "share/man/man1/switchboard.1",
        "share/man/man5/switchboard.conf.5", "etc/switchboard/switchboard.conf.lua",
        "lib/systemd/system/switchboard.service", "lib/systemd/system/switchboard.socket",
        "lib/systemd/system/switchboard-admin.socket", "lib/systemd/system/switchboard-http.socket",
        "lib/sysusers.d/switchboard.conf" }) do
      assert.is_true(H.exists(prefix .. "/" .. f), f .. " is missing")
    end
    local unit = H.read(prefix .. "/lib/systemd/system/switchboard.service")
    assert.truthy(unit:find("ExecStart=/usr/local/bin/switchboard serve --config /usr/local/etc/switchboard/"
      .. "switchboard.conf.lua", 1, true), unit)
    assert.are.equal("rwxr-xr-x", lfs.attributes(bin, "permissions"))
  end)

  it("runs from its own prefix, never from the build tree", function()
    local script = dest .. "/where.lua"
    H.write(script, "io.write(package.path)\n")
    local out, code = H.sh(("cd / && env -u SWITCHBOARD_HOME %s exec %s"):format(H.q(bin), H.q(script)))
    assert.are.equal(0, code, out)
    assert.are.equal(prefix .. "/share/switchboard/lua/?.lua", out:match("^[^;]+"))
    assert.is_nil(out:find(H.ROOT .. "/", 1, true), out)
    local v, vcode = H.sh(("cd / && env -u SWITCHBOARD_HOME %s --version"):format(H.q(bin)))
    assert.are.equal(0, vcode, v)
    assert.truthy(v:find("^switchboard %d"), v)
    -- moved elsewhere, it still finds its files (relocatable)
    local moved = H.tmpdir("moved")
    H.sh(("cp -a %s/. %s/"):format(H.q(prefix), H.q(moved)))
    v, vcode = H.sh(("cd / && env -u SWITCHBOARD_HOME %s/bin/switchboard version"):format(H.q(moved)))
    assert.are.equal(0, vcode, v)
    -- without its share/switchboard it says what it looked for
    H.sh(("rm -rf %s/share/switchboard"):format(H.q(moved)))
    v, vcode = H.sh(("cd / && env -u SWITCHBOARD_HOME %s/bin/switchboard version 2>&1"):format(H.q(moved)))
    assert.are.equal(1, vcode)
    assert.truthy(v:find("share/switchboard", 1, true), v)
  end)

  it("uninstalls what it installed and keeps the configuration", function()
    local other = H.tmpdir("dest2")
    local out, code = H.sh(("make -s -C %s install uninstall DESTDIR=%s PREFIX=/usr 2>&1"):format(H.q(H.ROOT),
      H.q(other)))
    assert.are.equal(0, code, out)
    assert.is_false(H.exists(other .. "/usr/bin/switchboard"))
    assert.is_false(H.exists(other .. "/usr/share/switchboard"))
    assert.is_false(H.exists(other .. "/usr/lib/systemd/system/switchboard.service"))
    assert.is_false(H.exists(other .. "/usr/lib/systemd/system/switchboard-http.socket"))
    assert.is_true(H.exists(other .. "/etc/switchboard/switchboard.conf.lua"))
  end)

  describe("started by socket activation", function()
    local dir, sink_pid, pid, conf, note_file, agent_sock, admin_sock, ino_agent, ino_admin, http_port
    setup(function()
      dir = H.tmpdir("act")
      note_file = dir .. "/notes"
      agent_sock, admin_sock = dir .. "/agent.sock", dir .. "/admin.sock"
      sink_pid = H.sh(("python3 %s/tests/support/notify_sink.py %s %s >/dev/null 2>&1 & echo $!")
        :format(H.q(H.ROOT), H.q(dir .. "/notify.sock"), H.q(note_file))):gsub("%s+", "")
      H.wait_for(function() return H.exists(note_file .. ".ready") end, 10, "the notification socket")
      conf = dir .. "/switchboard.conf.lua"
      H.write(conf, ("return { data_dir = %q, agent_socket = %q, admin_socket = %q, master_key_file = %q,"
        .. " log = { level = 'debug', file = %q }, audit = { flush_ms = 0 }, tool_dirs = { %q } }\n"):format(
        dir .. "/data", agent_sock, admin_sock, dir .. "/data/master.key", dir .. "/server.log",
        H.ROOT .. "/examples/tools"))
      -- a port free right now for the HTTP listener's socket
      local probe = assert(require("core.httpd").listen{ port = 0, handler = function() return 200, {}, "" end })
      http_port = probe:port()
      probe:close()
      pid = H.sh(("cd / && exec env -u SWITCHBOARD_HOME NOTIFY_SOCKET=%s WATCHDOG_USEC=400000 systemd-socket-activate"
        .. " -l %s -l %s -l 127.0.0.1:%d --fdname=agent:admin:http -E NOTIFY_SOCKET -E WATCHDOG_USEC %s serve"
        .. " --config %s >%s 2>&1 & echo $!")
        :format(H.q(dir .. "/notify.sock"), H.q(agent_sock), H.q(admin_sock), http_port, H.q(bin), H.q(conf),
          H.q(dir .. "/stderr.log"))):gsub("%s+", "")
      H.wait_for(function() return H.exists(agent_sock) and H.exists(admin_sock) end, 10, "the activated sockets")
      ino_agent, ino_admin = inode(agent_sock), inode(admin_sock)
    end)
    teardown(function()
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      os.execute("kill " .. sink_pid .. " 2>/dev/null")
    end)

    local function admin(args)
      local out, code = H.sh(("env -u SWITCHBOARD_HOME %s admin --config %s --json %s 2>&1"):format(H.q(bin),
        H.q(conf), args))
      return json.decode(out) or out, code
    end

    it("sends READY=1 and serves an agent session through the socket it was given", function()
      -- the first connection starts it (systemd-socket-activate execs then)
      local t, code = admin("tenant add act")
      assert.are.equal(0, code, tostring(t))
      H.wait_for(function() return has_note(note_file, "^READY=1") ~= nil end, 15, "READY=1")
      assert.truthy(has_note(note_file, "STATUS=serving %d+ tools"))
      local a, acode = admin("agent add --tenant act --name bot --type caioo --groups Examples")
      assert.are.equal(0, acode, tostring(a))
      H.async(function()
        local c = assert(H.client(agent_sock))
        local r = c:initialize(a.token)
        assert.truthy(r and r.result, json.encode(r))
        local call = c:call("example_clock", {})
        assert.truthy(call and call.result and not call.result.isError, json.encode(call))
        c:close()
      end)
      local log = H.read(dir .. "/server.log")
      assert.truthy(log:find("agents on " .. agent_sock .. " (systemd fd 3)", 1, true), log)
      assert.are.equal(ino_agent, inode(agent_sock), "the agent socket was re-created")
      assert.are.equal(ino_admin, inode(admin_sock), "the admin socket was re-created")
      H.wait_for(function() return has_note(note_file, "^WATCHDOG=1") ~= nil end, 10, "WATCHDOG=1")
    end)

    it("serves MCP over HTTP on the socket passed as http (no http.listen in the config)", function()
      local log = H.read(dir .. "/server.log")
      assert.truthy(log:find(("http: MCP on http://127.0.0.1:%d/mcp (systemd fd 5)"):format(http_port), 1, true), log)
      assert.is_nil(log:find("nothing here serves", 1, true), log)
      local a, acode = admin("agent add --tenant act --name web --type caioo --groups Examples")
      assert.are.equal(0, acode, tostring(a))
      H.async(function()
        local http = require("core.http")
        local base = ("http://127.0.0.1:%d"):format(http_port)
        local res = assert(http.request{ url = base .. "/healthz" })
        assert.are.equal(200, res.status)
        res = assert(http.request{ method = "POST", url = base .. "/mcp", body = json.encode({ jsonrpc = "2.0",
          id = 1, method = "initialize", params = { protocolVersion = "2025-06-18", capabilities = {},
          clientInfo = { name = "t", version = "1" } } }), headers = { ["Content-Type"] = "application/json",
          Accept = "application/json, text/event-stream", Authorization = "Bearer " .. a.token } })
        assert.are.equal(200, res.status, res.body)
        assert.truthy(res.headers["mcp-session-id"], res.body)
      end)
    end)

    it("sends RELOADING=1 with MONOTONIC_USEC, then READY=1, around a reload", function()
      local before = #notes(note_file)
      os.execute("kill -HUP " .. pid)
      H.wait_for(function()
        local n = notes(note_file)
        for i = before + 1, #n do
          if n[i]:find("^READY=1") then return true end
        end
      end, 10, "READY=1 after the reload")
      local n, reloading = notes(note_file), nil
      for i = before + 1, #n do
        if n[i]:find("^RELOADING=1") then reloading = n[i] break end
      end
      assert.truthy(reloading and reloading:find("\nMONOTONIC_USEC=%d+"), tostring(reloading))
    end)

    it("sends STOPPING=1 on SIGTERM and leaves the sockets it was given where they are", function()
      os.execute("kill -TERM " .. pid)
      H.wait_for(function()
        local _, code = H.sh("kill -0 " .. pid .. " 2>/dev/null")
        return code ~= 0
      end, 15, "the server to stop")
      assert.truthy(has_note(note_file, "^STOPPING=1"))
      assert.are.equal(ino_agent, inode(agent_sock), "the agent socket was removed")
      assert.are.equal(ino_admin, inode(admin_sock), "the admin socket was removed")
      assert.truthy(H.read(dir .. "/server.log"):find("switchboard stopped", 1, true))
    end)
  end)
end)

describe("master_key_credential", function()
  it("reads the master key from $CREDENTIALS_DIRECTORY and never creates one", function()
    local creds = H.tmpdir("creds")
    assert(require("core.vault").create_master(creds .. "/master.key"))
    local srv = H.server({ config = { master_key_credential = "master.key" },
                           wrapper = "env CREDENTIALS_DIRECTORY=" .. H.q(creds) })
    local ok, err = pcall(function()
      local st = srv.admin("status")
      assert.are.equal(0, st.connections)
      assert.is_false(H.exists(srv.dir .. "/data/master.key"))
      local v = srv.admin("audit verify")
      assert.is_true(v.ok, tostring(v.problem))
    end)
    srv.stop()
    assert(ok, err)
  end)

  it("stops the start with a clear error when the unit gives no credentials", function()
    local srv = H.server({ config = { master_key_credential = "master.key" }, start = false })
    local ok, err = pcall(srv.start)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("$CREDENTIALS_DIRECTORY is not set", 1, true), tostring(err))
    assert.is_false(H.exists(srv.dir .. "/data/master.key"))
  end)

  it("refuses a name that is not a plain file name", function()
    local srv = H.server({ config = { master_key_credential = "../master.key" }, start = false })
    local ok, err = pcall(srv.start)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("master_key_credential", 1, true), tostring(err))
  end)
end)
