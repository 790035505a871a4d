-- Admin verbs, reloads, policies in the call path, revocation, limits
-- and graceful shutdown, each against a real server process.
local H = require("helpers")
local loop = require("core.loop")

local function policy_dir(files)
  local dir = H.tmpdir("pol")
  for name, src in pairs(files) do H.write(dir .. "/" .. name, src) end
  return dir
end

describe("admin CLI", function()
  local srv
  setup(function() srv = H.server() end)
  teardown(function() srv.stop() end)

  it("listens with the admin socket at mode 0600 and the agent socket at 0660", function()
    local lfs = require("lfs")
    assert.equal("rw-------", lfs.attributes(srv.admin_socket, "permissions"))
    assert.equal("rw-rw----", lfs.attributes(srv.agent_socket, "permissions"))
    assert.equal("rw-------", lfs.attributes(srv.dir .. "/data/master.key", "permissions"))
  end)

  it("adds and lists tenants and agents, shows the token once and stores only its hash", function()
    local t, code = srv.admin("tenant add globex")
    assert.equal(0, code)
    assert.equal("globex", t.name)
    local _, code2, err = srv.admin("tenant add globex")
    assert.equal(1, code2)
    assert.truthy(err:find("already exists"))
    local a = srv.admin("agent add --tenant globex --name helper --type personal_assistant --groups Examples")
    assert.truthy(a.token:match("^sbt_[%w_%-]+$"))
    local list = srv.admin("agent list --tenant globex")
    assert.equal(1, #list.agents)
    assert.equal("helper", list.agents[1].name)
    assert.is_nil(list.agents[1].token)
    local text = srv.admin_text("agent list")
    assert.truthy(text:find("TENANT%s+AGENT%s+TYPE"))
    assert.falsy(text:find(a.token, 1, true))
    -- the database holds the hash, not the token
    local dbfile = H.read(srv.dir .. "/data/switchboard.db") or ""
    local wal = H.read(srv.dir .. "/data/switchboard.db-wal") or ""
    assert.falsy((dbfile .. wal):find(a.token, 1, true))
    local tenants = srv.admin("tenant list")
    assert.equal("globex", tenants.tenants[1].name)
  end)

  it("refuses bad input naming the field", function()
    local _, code, err = srv.admin("agent add --tenant globex --name x --type robot")
    assert.equal(1, code)
    assert.truthy(err:find("agent type"))
    _, code, err = srv.admin("agent add --tenant nowhere --name x --type caioo")
    assert.equal(1, code)
    assert.truthy(err:find("no tenant named 'nowhere'"))
    _, code, err = srv.admin("tenant add 'bad name!'")
    assert.equal(1, code)
    assert.truthy(err:find("tenant name"))
    _, code = srv.admin("frobnicate")
    assert.equal(2, code)
  end)

  it("edits tenant features and agent groups with +/-", function()
    local f = srv.admin("tenant features globex +custom.twilio +beta")
    assert.same({ "custom.twilio", "beta" }, f.features)
    f = srv.admin("tenant features globex -beta")
    assert.same({ "custom.twilio" }, f.features)
    local g = srv.admin("agent groups helper --tenant globex +Other -Examples")
    assert.same({ "Other" }, g.groups)
  end)
end)

describe("agents and tool groups", function()
  local srv, up
  setup(function()
    up = H.upstream()
    srv = H.server({ config = { tool_settings = { example_fetch = { base_url = up.url } } } })
  end)
  teardown(function() srv.stop() up.stop() end)

  it("shows an agent only the tools of its groups and tells it when that changes", function()
    local token = srv.agent("initech", "peter", "caioo", "Nothing")
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      assert.is_table(c:initialize(token).result)
      local r = c:request("tools/list", {})
      assert.equal(0, #r.result.tools)
      r = c:call("example_clock", {})
      assert.equal(-32602, r.error.code)
      local out = srv.admin("agent groups peter --tenant initech +Examples")
      assert.same({ "Nothing", "Examples" }, out.groups)
      local m = c:recv(5)
      assert.equal("notifications/tools/list_changed", m.method)
      r = c:request("tools/list", {})
      assert.equal(2, #r.result.tools)
      c:close()
    end)
  end)

  it("closes the connections of a revoked agent and refuses its token", function()
    local token = srv.agent("initech", "milton", "caioo", "Examples")
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      assert.is_table(c:initialize(token).result)
      srv.admin("agent revoke milton --tenant initech")
      local m, err = c:recv(5)
      assert.is_nil(m)
      assert.equal("closed", err)
      local d = assert(H.client(srv.agent_socket))
      assert.equal(-32010, d:initialize(token).error.code)
      d:close()
    end)
  end)
end)

describe("policies", function()
  local srv, up, token, pdir
  local base = {
    ["10_paths.lua"] = H.read(H.ROOT .. "/examples/policies/quiet_paths.lua"),
    ["20_hold.lua"] = [[
      return { name = "hold_slow", priority = 20, tools = { "example_fetch" },
               check = function(call)
                 if call.args.path == "/slow" then return hold("slow paths need a human") end
                 if call.args.path == "/esc" then return escalate("ask a human first") end
                 return allow()
               end }
    ]],
  }
  setup(function()
    up = H.upstream()
    pdir = policy_dir(base)
    srv = H.server({ config = { policy_dir = pdir, tool_settings = { example_fetch = { base_url = up.url } } } })
    token = srv.agent("umbrella", "alice", "caioo", "Examples")
  end)
  teardown(function() srv.stop() up.stop() end)

  local function call(args)
    return H.async(function()
      local c = assert(H.client(srv.agent_socket))
      c:initialize(token)
      local r = c:call("example_fetch", args)
      c:close()
      return r
    end)
  end

  it("deny, flag, hold and escalate reach the agent", function()
    local r = call({ path = "/private/x" })
    assert.is_true(r.result.isError)
    assert.truthy(r.result.content[1].text:find("Refused by policy quiet_paths", 1, true))
    r = call({ path = "/admin/x" })
    assert.is_nil(r.result.isError)
    assert.truthy(r.result.content[1].text:find("flagged", 1, true))
    r = call({ path = "/slow" })
    assert.is_true(r.result.isError)
    assert.equal("held", r.result.structuredContent.status)
    assert.is_number(r.result.structuredContent.escalation_id)
    r = call({ path = "/esc" })
    assert.equal("escalated", r.result.structuredContent.status)
    r = call({ path = "/hello.json" })
    assert.equal(200, r.result.structuredContent.status)
  end)

  it("keeps the previous policies when a reload meets a broken file", function()
    H.write(pdir .. "/30_broken.lua", "return { name = 'broken', priority = 1, check = function( end }")
    srv.signal("HUP")
    os.execute("sleep 0.3")
    assert.is_true(srv.alive())
    local log = H.read(srv.log)
    assert.truthy(log:find("reload refused", 1, true))
    assert.truthy(log:find("30_broken.lua", 1, true))
    local r = call({ path = "/private/x" })
    assert.truthy(r.result.content[1].text:find("quiet_paths", 1, true))
    -- a valid replacement is picked up
    H.write(pdir .. "/30_broken.lua", [[
      return { name = "deny_all", priority = 1, check = function() return deny("closed today") end }
    ]])
    local out, code = srv.admin("reload")
    assert.equal(0, code)
    assert.truthy(#out.policies >= 3)
    r = call({ path = "/hello.json" })
    assert.truthy(r.result.content[1].text:find("closed today", 1, true))
    os.remove(pdir .. "/30_broken.lua")
    srv.signal("HUP")
    os.execute("sleep 0.3")
  end)

  local escapes = {
    os_execute = "return { name='x', priority=1, check=function() os.execute('touch /tmp/sb-escaped') return allow() end }",
    io_open = "return { name='x', priority=1, check=function() io.open('/etc/passwd') return allow() end }",
    require = "return { name='x', priority=1, check=function() require('os') return allow() end }",
    debug = "return { name='x', priority=1, check=function() debug.sethook() return allow() end }",
    string_mt = "return { name='x', priority=1, check=function() getmetatable('').__index.upper = nil return allow() end }",
    string_lib = "return { name='x', priority=1, check=function() string.upper = nil return allow() end }",
    globals = "return { name='x', priority=1, check=function() allow = nil return allow() end }",
    load = "return { name='x', priority=1, check=function() load('return 1')() return allow() end }",
    loop = "return { name='x', priority=1, check=function() while true do end end }",
    memory = "return { name='x', priority=1, check=function() local s = ('x'):rep(1e9) return allow() end }",
    growth = "return { name='x', priority=1, check=function() local t = {} for i = 1, 1e7 do t[i] = i end"
      .. " return allow() end }",
  }
  for what, src in pairs(escapes) do
    it("fails closed on a sandbox escape attempt: " .. what, function()
      H.write(pdir .. "/05_escape.lua", src)
      local _, code = srv.admin("reload")
      assert.equal(0, code)
      local r = call({ path = "/hello.json" })
      assert.is_true(r.result.isError)
      assert.truthy(r.result.content[1].text:find("a safety policy failed", 1, true))
      assert.is_true(srv.alive())
      assert.equal("Hello", ("hello"):gsub("^h", string.upper))
      os.remove(pdir .. "/05_escape.lua")
      srv.admin("reload")
      r = call({ path = "/hello.json" })
      assert.equal(200, r.result.structuredContent.status)
    end)
  end

  it("refuses an endless loop at load time too", function()
    H.write(pdir .. "/05_spin.lua", "while true do end")
    local _, code, err = srv.admin("reload")
    assert.equal(1, code)
    assert.truthy(err:find("budget"))
    os.remove(pdir .. "/05_spin.lua")
    assert.is_false(H.exists("/tmp/sb-escaped"))
  end)
end)

describe("tool reload", function()
  it("picks up a new tool on SIGHUP, tells connected agents, and refuses a broken tool file", function()
    local tdir = H.tmpdir("tools")
    local srv = H.server({ config = { tool_dirs = { H.ROOT .. "/examples/tools", tdir } } })
    local token = srv.agent("r", "a", "caioo", "Examples")
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      c:initialize(token)
      assert.equal(2, #c:request("tools/list", {}).result.tools)
      H.write(tdir .. "/echo.lua", [[
        return { name = "example_echo", description = "Echoes its text.", group = "Examples",
                 input_schema = { type = "object", properties = { text = { type = "string" } } },
                 annotations = { readOnlyHint = true },
                 handler = function(_, args) return { text = args.text or "" } end }
      ]])
      srv.signal("HUP")
      local m = c:recv(5)
      assert.equal("notifications/tools/list_changed", m.method)
      local r = c:call("example_echo", { text = "hi" })
      assert.equal("hi", r.result.content[1].text)
      -- a broken definition is refused with its file and field; the set in force stays
      H.write(tdir .. "/bad.lua", [[
        return { name = "bad tool", description = "x", group = "Examples",
                 input_schema = { type = "object" }, annotations = { readOnlyHint = true },
                 handler = function() end }
      ]])
      local _, code, err = srv.admin("reload")
      assert.equal(1, code)
      assert.truthy(err:find("bad.lua: name:", 1, true), err)
      r = c:call("example_echo", { text = "still here" })
      assert.equal("still here", r.result.content[1].text)
      c:close()
    end)
    srv.stop()
  end)
end)

describe("limits and shutdown", function()
  it("refuses connections over the limit and closes idle ones", function()
    local srv = H.server({ config = { limits = { connections = 2, idle_seconds = 1 } } })
    local token = srv.agent("t", "a", "caioo", "Examples")
    H.async(function()
      local a = assert(H.client(srv.agent_socket))
      local b = assert(H.client(srv.agent_socket))
      a:initialize(token)
      b:initialize(token)
      local c = assert(H.client(srv.agent_socket))
      local m = c:recv(5)
      assert.equal(-32000, m.error.code)
      assert.truthy(m.error.message:find("too many connections"))
      local _, err = a:recv(3)
      assert.equal("closed", err)
    end)
    srv.stop()
  end)

  it("answers a call that passes its deadline and a result over the size limit with errors", function()
    local up = H.upstream()
    local srv = H.server({ config = { limits = { call_seconds = 1, result_bytes = 2048 },
                                      tool_settings = { example_fetch = { base_url = up.url } } } })
    local token = srv.agent("t", "a", "caioo", "Examples")
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      c:initialize(token)
      local t0 = loop.time()
      local r = c:call("example_fetch", { path = "/slow?ms=2500" })
      assert.is_true(r.result.isError)
      assert.truthy(r.result.content[1].text:find("did not finish within 1 seconds", 1, true))
      assert.truthy(loop.time() - t0 < 2)
      r = c:call("example_fetch", { path = "/big.json" })
      assert.is_true(r.result.isError)
      assert.truthy(r.result.content[1].text:find("too large", 1, true))
      r = c:call("example_fetch", { path = "/hello.json" })
      assert.equal(200, r.result.structuredContent.status)
      -- the late answer of the first call never arrives
      assert.is_nil(c:recv(2))
      c:close()
    end)
    srv.stop()
    up.stop()
  end)

  it("finishes in-flight calls on SIGTERM and removes the socket files", function()
    local up = H.upstream()
    local srv = H.server({ config = { tool_settings = { example_fetch = { base_url = up.url } } } })
    local token = srv.agent("t", "a", "caioo", "Examples")
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      c:initialize(token)
      c:send({ id = 1, method = "tools/call", params = { name = "example_fetch", arguments = { path = "/slow?ms=700" } } })
      loop.sleep(0.2)
      srv.signal("TERM")
      local r = c:wait(1, 5)
      assert.equal(200, r.result.structuredContent.status)
    end)
    H.wait_for(function() return not srv.alive() end, 10, "the server to stop")
    assert.is_false(H.exists(srv.agent_socket))
    assert.is_false(H.exists(srv.admin_socket))
    up.stop()
  end)

  it("refuses to start with a master key file others can read", function()
    local dir = H.tmpdir("key")
    H.write(dir .. "/master.key", string.rep("k", 32))
    os.execute("chmod 644 " .. dir .. "/master.key")
    H.write(dir .. "/c.lua", ("return { data_dir = %q, master_key_file = %q, agent_socket = %q, admin_socket = %q }")
      :format(dir, dir .. "/master.key", dir .. "/a.sock", dir .. "/b.sock"))
    local out, code = H.sh(H.BIN .. " serve --config " .. dir .. "/c.lua 2>&1")
    assert.equal(1, code)
    assert.truthy(out:find("mode 0644", 1, true))
    assert.is_false(H.exists(dir .. "/a.sock"))
  end)

  it("refuses an unknown config key or a wrong type with its name", function()
    local dir = H.tmpdir("cfg")
    H.write(dir .. "/a.lua", "return { limits = { conections = 5 } }")
    local out = H.sh(H.BIN .. " serve --config " .. dir .. "/a.lua 2>&1")
    assert.truthy(out:find("unknown key 'limits.conections'", 1, true))
    H.write(dir .. "/b.lua", "return { log = { level = 3 } }")
    out = H.sh(H.BIN .. " serve --config " .. dir .. "/b.lua 2>&1")
    assert.truthy(out:find("'log.level' must be a string", 1, true))
  end)
end)
