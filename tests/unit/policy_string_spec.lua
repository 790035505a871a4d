-- switchboard.policy_string: the string functions policies see bound the
-- work of Lua's matcher, which runs in one C call where the instruction
-- hook never fires; through the real policy sandbox.
local policy = require("switchboard.policy")
local ps = require("switchboard.policy_string")

local ROOT = os.getenv("SB_ROOT") or "."
local BUDGET = 1000000

local function load(check_src, settings)
  local src = ("return { name = 'p', priority = 1, check = function(call) %s end }"):format(check_src)
  local p = assert(policy.load_source(src, "p.lua", settings, BUDGET))
  return setmetatable({ list = { p }, budget = BUDGET }, policy)
end

-- evaluate and return the decision and the CPU seconds it took
local function timed(set, call)
  local t0 = os.clock()
  local d = set:evaluate(call)
  return d, os.clock() - t0
end

describe("bounded pattern matching in policies", function()
  local long = { tool = "t", args = { body = ("a"):rep(5000) } }

  local pathological = {
    find = "call.args.body:find('.-.-.-.-b')",
    match = "call.args.body:match('.-.-.-.-b')",
    gsub = "call.args.body:gsub('.-.-.-.-b', '')",
    gmatch = "for _ in call.args.body:gmatch('.-.-.-.-b') do end",
    ["string.find"] = "string.find(call.args.body, '.-.-.-.-b')",
    ["string.gsub"] = "string.gsub(call.args.body, '(.-)%1b', 'x')",
    ["a long plain pattern"] = "call.args.body:find(('a'):rep(4000) .. 'b.')",
  }
  for what, src in pairs(pathological) do
    it("stops a pathological pattern at once and fails closed: " .. what, function()
      local d, secs = timed(load(src .. " return allow()"), long)
      assert.equal("deny", d.decision)
      assert.is_true(d.failed)
      assert.truthy(d.error:find("matching steps", 1, true), d.error)
      assert.truthy(d.error:find("the 10000000 a policy check may spend", 1, true), d.error)
      assert.truthy(d.error:find("on 5000 bytes", 1, true), d.error)
      assert.truthy(secs < 1, ("took %.2f s"):format(secs))
    end)
  end

  it("names the pattern in the error (shortened)", function()
    local d = load("call.args.body:find('.-.-.-.-b') return allow()"):evaluate(long)
    assert.truthy(d.error:find('the pattern ".-.-.-.-b"', 1, true), d.error)
    d = load("call.args.body:find(('.-'):rep(40) .. 'b') return allow()"):evaluate(long)
    assert.truthy(d.error:find('the pattern "' .. (".-"):rep(20) .. '"…', 1, true), d.error)
  end)

  it("counts the steps of every call in a check, not each call alone", function()
    -- each find is allowed on its own; two hundred of them are not
    local src = "for i = 1, 200 do call.args.body:find('%d+x') end return allow()"
    local one = load("call.args.body:find('%d+x') return allow()")
    local body = { tool = "t", args = { body = ("1"):rep(1000) } }
    assert.equal("allow", one:evaluate(body).decision)
    local d, secs = timed(load(src), body)
    assert.is_true(d.failed)
    assert.truthy(d.error:find("matching steps", 1, true), d.error)
    assert.truthy(d.error:find("left of the 10000000 a policy check may spend", 1, true), d.error)
    assert.truthy(secs < 1, ("took %.2f s"):format(secs))
    -- the budget starts afresh for the next check
    assert.equal("allow", one:evaluate(body).decision)
  end)

  it("refuses a malformed pattern with a clear error", function()
    local d = load("call.args.body:find('[a') return allow()"):evaluate(long)
    assert.is_true(d.failed)
    assert.truthy(d.error:find("malformed pattern", 1, true), d.error)
  end)

  it("restores the string methods after a check, also after a failing one", function()
    local before = getmetatable("").__index
    load("call.args.body:find('.-.-.-.-b') return allow()"):evaluate(long)
    assert.equal(before, getmetatable("").__index)
    assert.equal(string.find, ("x").find)
    load("return allow()"):evaluate(long)
    assert.equal(before, getmetatable("").__index)
  end)

  local ordinary = {
    "return call.args.body:find('URGENT', 1, true) and flag('urgent') or allow()",
    "for w in call.args.body:gmatch('%S+') do if w == 'STOP' then return deny('stop') end end return allow()",
    "local t = call.args.body:match('^%s*(.-)%s*$') return #t > 0 and allow() or deny('empty')",
    "local s = call.args.body:gsub('%s+', ' '):lower() return s:find('wire transfer', 1, true) and hold('x') or allow()",
    "return call.args.body:find('%d%d%d%d') and flag('digits') or allow()",
    "local k, v = call.args.body:match('^(%w+)%s*=%s*(.-)$') return allow()",
    "return call.args.body:find('%f[%w]refund%f[%W]') and flag('refund') or allow()",
    "local n = select(2, call.args.body:gsub('!', '')) return n > 50 and flag('shouting') or allow()",
  }
  for i, src in ipairs(ordinary) do
    it("keeps ordinary patterns working on a long message (" .. i .. ")", function()
      local body = ("Hello there, your order 1234 ships today! Reply STOP to end. "):rep(26) -- 1.6 KB
      local d = load(src):evaluate({ tool = "t", args = { body = body } })
      assert.is_nil(d.error)
      assert.is_nil(d.failed)
    end)
  end

  it("gives the same results as the string library", function()
    local subjects = { "", "hello world", "a,b,,c", "  trim me  ", "(a(b)c)", "x=1; y=22", "THE end$" }
    local patterns = { "%w+", "^%s*(.-)%s*$", "(%w+)=(%d+)", "%b()", "[^,]*", "%f[%a]%a+", "()o()", "$",
                       "^", "e$", "%$", ".-", "a?b?c?", "[%]]", "^THE" }
    for _, s in ipairs(subjects) do
      for _, p in ipairs(patterns) do
        assert.same({ string.find(s, p) }, { ps.lib.find(s, p) }, p)
        assert.same({ string.match(s, p) }, { ps.lib.match(s, p) }, p)
        assert.same({ string.gsub(s, p, "<%0>") }, { ps.lib.gsub(s, p, "<%0>") }, p)
        local a, b = {}, {}
        for m in string.gmatch(s, p) do a[#a + 1] = m end
        for m in ps.lib.gmatch(s, p) do b[#b + 1] = m end
        assert.same(a, b, p)
      end
    end
  end)

  it("bounds the matcher's work: cheap for simple patterns, polynomial for overlapping repetitions", function()
    local n = 1000000
    assert.truthy(ps.cost("find", n, "needle", true) < 2 * n)
    assert.truthy(ps.cost("gmatch", n, "%S+") < 10 * n)
    assert.truthy(ps.cost("find", n, "^%+[1-9]%d+$") < 10 * n)
    assert.truthy(ps.cost("find", n, "%d%d%d") < 10 * n)
    assert.truthy(ps.cost("find", 1000, "%d+x") > 1000 * 1000 / 2)       -- "1111…" backtracks
    assert.truthy(ps.cost("find", 300, ".-.-.-.-b") > 300 ^ 5 / 120)      -- the real worst case
    assert.truthy(ps.cost("find", 20, ("a?"):rep(20) .. ("a"):rep(20)) > 2 ^ 20)
    assert.is_nil((ps.cost("find", 10, "%")))
    -- a '$' that does not end the pattern is a character a repetition can give back
    assert.truthy(ps.cost("find", 1000, "$*$*$") > ps.cost("find", 1000, "a*b*$") * 100)
  end)

  it("loads and runs the shipped policies and the example", function()
    for _, file in ipairs({ "policies/authorization_tiers.lua", "policies/autonomous_sends.lua",
                            "policies/external_writes.lua", "policies/recipients.lua",
                            "policies/safety_gateway.lua", "examples/policies/quiet_paths.lua" }) do
      local f = assert(io.open(ROOT .. "/" .. file))
      local src = f:read("a")
      f:close()
      assert(policy.load_source(src, file, {}, BUDGET))
    end
    local set = assert(policy.load(ROOT .. "/policies", {}, BUDGET))
    local d = set:evaluate({
      tool = "twilio_send_sms", args = { to = "+14155550123", body = ("Your table is ready. "):rep(76) },
      writes = true, sender = "owner", agent = { name = "a", type = "caioo" }, tenant = { name = "t" },
      connection = { autonomous_sends = true, numbers = { "+14155550100" } },
      recent_sends = function() return 0 end, sends_today = function() return 0 end,
      opted_out = function() return false end,
    })
    assert.is_nil(d.error)
    assert.equal("allow", d.decision)
  end)
end)
