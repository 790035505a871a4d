-- core.phone (libphonenumber behind a C API), the schema's e164 format
-- built on it, and the recipients policy's number checks, run through the
-- real policy sandbox.
-- Run: ./switchboard exec /usr/bin/busted --lpath="$PWD/tests/?.lua" tests/unit/phone_spec.lua
local phone = require("core.phone")
local schema = require("switchboard.schema")
local policy = require("switchboard.policy")
local send_view = require("send_view")

local ROOT = os.getenv("SB_ROOT") or "."

describe("core.phone", function()
  it("finds a valid number's region and type and its E.164 form", function()
    local cases = {
      -- number, region, type
      { "+14155550100", "US", "fixed_line_or_mobile" }, -- the 555-01xx numbers the tests use
      { "+14155550199", "US", "fixed_line_or_mobile" },
      { "+12042345678", "CA", "fixed_line_or_mobile" },
      { "+447400123456", "GB", "mobile" },
      { "+442079460000", "GB", "fixed_line" },
      { "+33612345678", "FR", "mobile" },
      { "+491761234567", "DE", "mobile" },
      { "+18002345678", "US", "toll_free" },
      { "+80012345678", "001", "toll_free" }, -- international freephone: non-geographic
    }
    for _, c in ipairs(cases) do
      local p = assert(phone.parse(c[1]))
      assert.is_true(p.valid, c[1])
      assert.is_true(p.possible, c[1])
      assert.equal(c[2], p.region, c[1])
      assert.equal(c[3], p.type, c[1])
      assert.equal(c[1], p.e164)
      assert.is_nil(p.reason)
    end
    assert.equal(1, phone.parse("+14155550100").country_code)
    assert.equal(44, phone.parse("+447400123456").country_code)
  end)

  it("knows premium-rate numbers outside any fixed prefix list", function()
    for _, c in ipairs({
      { "+33836123456", "FR" }, { "+41901123456", "CH" }, { "+19005550100", "US" },
      { "+12469761234", "BB" }, -- NANP but not +1900: Barbados 976
      { "+448712345678", "GB" }, { "+611900123456", "AU" }, { "+34806123456", "ES" },
    }) do
      local p = assert(phone.parse(c[1]))
      assert.is_true(p.valid, c[1])
      assert.equal(c[2], p.region, c[1])
      assert.equal("premium_rate", p.type, c[1])
    end
  end)

  it("knows shared-cost numbers", function()
    for _, c in ipairs({ { "+34901123456", "ES" }, { "+33810123456", "FR" }, { "+41848123456", "CH" } }) do
      local p = assert(phone.parse(c[1]))
      assert.equal(c[2], p.region, c[1])
      assert.equal("shared_cost", p.type, c[1])
    end
  end)

  it("says why a number is not valid", function()
    local cases = {
      { "+10000000000", "not a valid number", true },
      { "+15551234567", "not a valid number", true }, -- area code 555 does not exist
      { "+447700900123", "not a valid number", true }, -- Ofcom's drama range
      { "+1415555012", "too short", false },
      { "+123456789012345", "too long", false },
    }
    for _, c in ipairs(cases) do
      local p = assert(phone.parse(c[1]))
      assert.is_false(p.valid, c[1])
      assert.equal(c[3], p.possible, c[1])
      assert.equal(c[2], p.reason, c[1])
      assert.equal("unknown", p.type)
      assert.is_nil(p.region)
    end
  end)

  it("normalizes what libphonenumber reads, extension apart", function()
    local p = assert(phone.parse("+1 (415) 555-0100"))
    assert.equal("+14155550100", p.e164)
    assert.equal("+442079460000", phone.parse("+4402079460000").e164) -- a national prefix dropped
    p = assert(phone.parse("+1 415 555 0100 ext. 12"))
    assert.equal("+14155550100", p.e164)
    assert.equal("12", p.extension)
  end)

  it("answers nil and a reason for what is not a phone number", function()
    local cases = {
      { "+999123456789", "country calling code" },
      { "4155550100", "country calling code" }, -- no '+': only international numbers
      { "hello", "not a phone number" },
      { "", "not a phone number" },
      { "+1\0" .. "4155550100", "NUL" },
      { "+1" .. ("0"):rep(80), "too long" },
    }
    for _, c in ipairs(cases) do
      local p, err = phone.parse(c[1])
      assert.is_nil(p, c[1])
      assert.truthy(err:find(c[2], 1, true), err)
    end
  end)

  it("raises on misuse", function()
    assert.has_error(function() phone.parse() end)
    assert.has_error(function() phone.parse({}) end)
  end)
end)

describe("schema format e164", function()
  local S = { type = "object", properties = { to = { type = "string", format = "e164" } } }

  it("accepts valid numbers as E.164 writes them", function()
    for _, n in ipairs({ "+14155550123", "+447400123456", "+33612345678", "+19005550100" }) do
      assert.is_true(schema.is_e164(n), n)
      assert.is_table(schema.validate(S, { to = n }))
    end
  end)

  it("refuses numbers the old pattern let through, with the reason", function()
    for _, c in ipairs({
      { "+10000000000", "not a valid number" },
      { "+999123456789", "no known country calling code" },
      { "+1415555012", "too short" },
      { "+12345678", "a local number" },
      { "+123456789012345", "too long" },
      { "+4402079460000", "not in E.164 form, which is +442079460000" },
    }) do
      local ok, why = schema.is_e164(c[1])
      assert.is_false(ok, c[1])
      assert.truthy(why:find(c[2], 1, true), why)
    end
    local _, msg = schema.validate(S, { to = "+10000000000" })
    assert.equal('Invalid arguments: `to` must be a valid phone number in E.164 format, like +14155550123'
      .. ' (got "+10000000000": not a valid number).', msg)
    _, msg = schema.validate(S, { to = "+1 415 555 0123" })
    assert.truthy(msg:find('(got "+1 415 555 0123": not a plus followed by digits only)', 1, true), msg)
  end)

  it("keeps e164-syntax for a lookup that asks Twilio whether a number is valid", function()
    local L = { type = "object", properties = { n = { type = "string", format = "e164-syntax" } } }
    assert.is_table(schema.validate(L, { n = "+1415555012" }))
    local _, msg = schema.validate(L, { n = "415" })
    assert.truthy(msg:find("`n` must be a phone number in E.164 format", 1, true), msg)
  end)
end)

describe("recipients policy (number types, countries)", function()
  local SRC
  local function load(settings)
    if not SRC then
      local f = assert(io.open(ROOT .. "/policies/recipients.lua", "rb"))
      SRC = f:read("a")
      f:close()
    end
    return policy.load_source(SRC, "recipients.lua", settings or {}, 1000000)
  end

  local function run(to, settings, numbers)
    local p = assert(load(settings))
    local set = setmetatable({ list = { p }, budget = 1000000 }, policy)
    return set:evaluate(send_view({
      tool = "twilio_send_sms", writes = true, args = { to = to, body = "hi" },
      connection = { numbers = numbers or { "+14155550100" } },
      opted_out = function() return false end,
      recent_sends = function() return 0 end,
      sends_today = function() return 0 end,
    }))
  end

  it("refuses premium-rate and shared-cost numbers by type", function()
    local all = { countries = { "1", "33", "34", "41", "44" } }
    for _, c in ipairs({
      { "+33836123456", "premium-rate" }, { "+41901123456", "premium-rate" }, { "+19005550100", "premium-rate" },
      { "+12469761234", "premium-rate" }, { "+34901123456", "shared-cost" }, { "+41848123456", "shared-cost" },
    }) do
      local d = run(c[1], all)
      assert.equal("deny", d.decision, c[1])
      assert.equal(("the recipient is a %s number"):format(c[2]), d.reason)
    end
    assert.equal("allow", run("+33612345678", all).decision)
    assert.equal("allow", run("+447400123456", all).decision)
  end)

  it("refuses the types in refused_types, and checks the list at load", function()
    assert.equal("allow", run("+34901123456", { refused_types = { "premium_rate" }, countries = { "ES" } }).decision)
    local d = run("+18002345678", { refused_types = { "premium_rate", "toll_free" } })
    assert.equal("deny", d.decision)
    assert.equal("the recipient is a toll-free number", d.reason)
    local p, err = load({ refused_types = { "premium" } })
    assert.is_nil(p)
    assert.truthy(err:find("refused_types: unknown number type 'premium'", 1, true), err)
  end)

  it("refuses invalid numbers and the operator's extra prefixes", function()
    local d = run("+10000000000")
    assert.equal("deny", d.decision)
    assert.truthy(d.reason:find("valid phone number", 1, true))
    d = run("+14155550177", { premium_prefixes = { "+1415555017" } })
    assert.equal("deny", d.decision)
    assert.equal("allow", run("+14155550177").decision)
  end)

  it("allows the regions of the tenant's own numbers by default", function()
    assert.equal("allow", run("+14155550123").decision)
    local d = run("+12042345678") -- Canada shares +1 with the US
    assert.equal("deny", d.decision)
    assert.equal("sending to CA (+1) is not allowed for this tenant", d.reason)
    assert.equal("allow", run("+12042345678", nil, { "+14155550100", "+14165550100" }).decision)
    d = run("+80012345678", nil)
    assert.equal("sending to non-geographic numbers (+800) is not allowed for this tenant", d.reason)
  end)

  it("takes countries as regions or as calling codes", function()
    assert.equal("allow", run("+12042345678", { countries = { "1" } }).decision)
    assert.equal("allow", run("+447400123456", { countries = { "GB" } }).decision)
    assert.equal("allow", run("+447400123456", { countries = { "+44" } }).decision)
    assert.equal("deny", run("+14155550123", { countries = { "GB" } }).decision)
    local p, err = load({ countries = { "United Kingdom" } })
    assert.is_nil(p)
    assert.truthy(err:find("countries: 'United Kingdom'", 1, true), err)
  end)

  it("gives policies phone() and nothing of the host", function()
    local p = assert(policy.load_source([[
      local n = phone("+33836123456")
      local bad, err = phone("+999123456789")
      return { name = "t", priority = 1,
               check = function() return deny(n.region .. " " .. n.type .. " " .. tostring(bad) .. " " .. err) end }
    ]], "t.lua", {}, 1000000))
    assert.equal("FR premium_rate nil no known country calling code after a '+'", p.check({}).reason)
  end)
end)

describe("switchboard.phone (core.phone.parse with the last numbers kept)", function()
  local kept = require("switchboard.phone")
  it("answers as core.phone.parse does, kept or not, with a table of its own each time", function()
    local inputs = { "+14155550123", "+442071838750", "+1415555012", "+999", "nonsense", "+14155550123",
                     "+33 1 42 68 53 00", ("9"):rep(80) }
    for round = 1, 2 do
      for _, s in ipairs(inputs) do
        local a, aerr = phone.parse(s)
        local b, berr = kept.parse(s)
        assert.same(a, b, s .. " round " .. round)
        assert.equal(aerr, berr, s)
      end
    end
    local first = assert(kept.parse("+14155550123"))
    first.valid, first.e164 = false, "+1999"
    local again = assert(kept.parse("+14155550123"))
    assert.is_true(again.valid)
    assert.equal("+14155550123", again.e164)
  end)
  it("starts again when full", function()
    local saved = kept.KEPT
    kept.KEPT = 3
    for i = 0, 9 do assert.truthy(kept.parse(("+1415555%04d"):format(i))) end
    kept.KEPT = saved
    assert.equal(phone.parse("+14155550009").e164, kept.parse("+14155550009").e164)
  end)
end)
