-- The command line: lua-argparse refuses unknown options and extra
-- arguments (exit 2), --help on every command, --version; untrusted text
-- in human output is shown escaped, never as raw control characters.
local H = require("helpers")
local TW = require("twilio_env")
local cli = require("switchboard.cli")

-- run the binary; returns stdout, exit code, stderr
local function run(args, dir)
  dir = dir or H.tmpdir("cli")
  local out, code = H.sh(("%s %s 2>%s/err"):format(H.q(H.BIN), args, H.q(dir)))
  return out, code, H.read(dir .. "/err")
end

-- a raw C0 control (other than newline), DEL, a C1 control or a byte
-- that is not UTF-8
local function raw_control(s)
  if s:find("[%z\1-\9\11-\31\127]") then return true end
  if not utf8.len(s) then return true end
  for _, cp in utf8.codes(s) do
    if cp >= 0x80 and cp <= 0x9F then return true end
  end
  return false
end

describe("command line parsing", function()
  local srv
  setup(function()
    srv = H.server()
    srv.agent("acme", "a1", "caioo", "Examples")
    srv.agent("globex", "g1", "caioo", "Examples")
  end)
  teardown(function() srv.stop() end)

  it("refuses an unknown option with exit 2 instead of ignoring it", function()
    local out, code, err = run(("admin --config %s agent list --tenat acme"):format(H.q(srv.conf)))
    assert.equal(2, code)
    assert.equal("", out)
    assert.truthy(err:find("unknown option '--tenat'", 1, true), err)
    assert.truthy(err:find("Did you mean '--tenant'?", 1, true), err)
    assert.truthy(err:find("Usage: switchboard admin agent list", 1, true), err)
    -- the right spelling lists only that tenant's agents
    local r, rcode = srv.admin("agent list --tenant acme")
    assert.equal(0, rcode)
    assert.equal(1, #r.agents)
    assert.equal("a1", r.agents[1].name)
    for _, args in ipairs({ "serve --bogus", "connect --sockt x", "admin --jsn status", "--frob",
                            "admin status --tenant acme", "admin tenant add one two", "admin --json=1 status",
                            "admin agent add --trusted-sender=yes --tenant acme", "frobnicate" }) do
      local o, c, e = run(args .. " --config " .. H.q(srv.conf))
      assert.equal(2, c, args)
      assert.equal("", o, args)
      assert.truthy(e:find("switchboard: ", 1, true), args)
    end
    -- nothing was added by the refused `tenant add one two`
    assert.equal(2, #srv.admin("tenant list").tenants)
  end)

  it("never takes the API key secret from the command line", function()
    local out, code, err = run(("admin --config %s twilio connect --tenant acme --account-sid AC1 --api-key-sid SK1"
      .. " --api-key-secret=TopSecretValue123 </dev/null"):format(H.q(srv.conf)))
    assert.equal(2, code)
    assert.equal("", out)
    assert.truthy(err:find("unknown option '--api-key-secret'", 1, true), err)
    assert.is_nil(err:find("TopSecretValue123", 1, true))
  end)

  it("answers --help on every command and subcommand, and --version", function()
    local lines = { "", "serve", "admin", "connect", "version" }
    for _, n in ipairs(cli.ADMIN_SPEC) do
      lines[#lines + 1] = "admin " .. n[1]
      -- every command the parser knows has its request
      if n[3] then
        for _, v in ipairs(n[3]) do
          lines[#lines + 1] = "admin " .. n[1] .. " " .. v[1]
          assert.is_function(cli.admin[n[1]][v[1]], n[1] .. " " .. v[1])
        end
      else
        assert.is_function(cli.admin[n[1]], n[1])
      end
    end
    for _, l in ipairs(lines) do
      local out, code, err = run(l .. " --help")
      assert.equal(0, code, l .. ": " .. tostring(err))
      assert.truthy(out:find("^Usage: switchboard"), l)
      assert.truthy(out:find("Usage: switchboard " .. l, 1, true), l)
      assert.truthy(out:find("--help", 1, true), l)
    end
    local out, code = run("admin agent add --help")
    assert.equal(0, code)
    for _, o in ipairs({ "--tenant", "--name", "--type", "--groups", "--tier", "--trusted-sender" }) do
      assert.truthy(out:find(o, 1, true), o)
    end
    assert.equal(out, (run("help admin agent add")))
    local v, vcode = run("--version")
    assert.equal(0, vcode)
    assert.truthy(v:find("^switchboard %d+%.%d+%.%d+ %(Lua 5%.4%)\n$"), v)
    assert.equal(v, (run("version")))
    -- the simulator and exec keep their own arguments
    local _, scode, serr = run("sim --help")
    assert.equal(0, scode)
    assert.truthy(serr:find("usage: switchboard sim", 1, true))
    local hout, hcode = run("exec --help")
    assert.equal(0, hcode)
    assert.truthy(hout:find("^Usage: switchboard exec"), hout)
    local dir = H.tmpdir("exec")
    H.write(dir .. "/args.lua", "io.write(table.concat(arg, ' ')) return 3\n")
    local eout, ecode = run(("exec %s --lpath=x -- --help"):format(H.q(dir .. "/args.lua")))
    assert.equal(3, ecode)
    assert.equal("--lpath=x -- --help", eout)
  end)

  it("keeps edits that start with '-' as edits", function()
    local _, added = srv.admin("tenant features acme +beta +gamma")
    assert.equal(0, added)
    local r, code = srv.admin("tenant features acme -beta --json")
    assert.equal(0, code)
    assert.same({ "gamma" }, r.features)
    r, code = srv.admin("agent groups a1 -Examples --tenant acme +Other")
    assert.equal(0, code)
    assert.same({ "Other" }, r.groups)
  end)
end)

describe("human output of untrusted text", function()
  it("escapes control characters and bytes that are not UTF-8", function()
    assert.equal("a\\x1b[2Jb\\x07c\\x7f", cli.printable("a\27[2Jb\7c\127"))
    assert.equal("\\u009b31m \\x9b \\xff \\xc3( é … 日本", cli.printable("\u{9b}31m \x9b \xff \xc3( é … 日本"))
    assert.equal("l1\nl2\\r\\t", cli.printable("l1\nl2\r\t", true))
    assert.equal("l1\\nl2", cli.printable("l1\nl2"))
    assert.equal("\\xed\\xa0\\x80 \\xc0\\xaf", cli.printable("\xed\xa0\x80 \xc0\xaf")) -- surrogate, overlong
    local t = cli.table({ { a = "x\27]0;pwned\7y", b = "ok" } }, { { "a", "A" }, { "b", "B" } })
    assert.is_false(raw_control(t))
    assert.truthy(t:find("x\\x1b]0;pwned\\x07y  ok", 1, true), t)
  end)

  it("shows an inbound SMS with ESC, CSI and BEL escaped in `twilio messages`", function()
    local sim = TW.sim()
    local srv = TW.server()
    TW.connect_sim(srv, sim, "clinic")
    local body = "\27[2J\27]0;owned\7\u{9b}31mred\127 tail"
    H.async(function()
      local status = sim.control("POST", "inbound", { from = TW.SIM.ANA, to = TW.SIM.DEFAULT, body = body })
      assert.equal(201, status)
    end)
    local text, code = srv.admin_text("twilio messages --tenant clinic --page-size 50")
    assert.equal(0, code, text)
    assert.is_false(raw_control(text), text)
    assert.truthy(text:find("\\x1b[2J\\x1b]0;owned\\x07\\u009b31mred", 1, true), text)
    -- --json stays JSON, with the text as it is
    local r = srv.admin("twilio messages --tenant clinic --page-size 50")
    local found = false
    for _, m in ipairs(r.messages) do found = found or m.body == body end
    assert.is_true(found)
    srv.stop()
    sim.stop()
  end)

  it("shows an agent-chosen execution id escaped in `executions` and `execution show`", function()
    local srv = H.server()
    local token = srv.agent("wal", "a", "caioo", "Examples")
    local id = "run\27[31m-\u{9b}1"
    H.async(function()
      local c = assert(H.client(srv.agent_socket))
      c:initialize(token)
      local r = c:call("example_clock", {}, { ["io.switchboard/execution"] = id })
      assert.truthy(r.result, "the call failed")
      c:close()
    end)
    local text, code = srv.admin_text("executions --tenant wal")
    assert.equal(0, code, text)
    assert.is_false(raw_control(text), text)
    assert.truthy(text:find("run\\x1b[31m-\\u009b1", 1, true), text)
    text, code = srv.admin_text("execution show " .. H.q(id) .. " --tenant wal")
    assert.equal(0, code, text)
    assert.is_false(raw_control(text), text)
    assert.truthy(text:find("execution run\\x1b[31m-\\u009b1", 1, true), text)
    srv.stop()
  end)
end)
