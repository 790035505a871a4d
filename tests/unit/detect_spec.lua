-- switchboard.detect (the PII and secret detectors) and the Safety Gateway
-- policy built on it, run through the real policy sandbox.
-- Run: ./switchboard exec /usr/bin/busted --lpath="$PWD/tests/?.lua" tests/unit/detect_spec.lua
local detect = require("switchboard.detect")
local policy = require("switchboard.policy")
local send_view = require("send_view")

local ROOT = os.getenv("SB_ROOT") or "."
local BUDGET = 1000000

local function u(cp) return utf8.char(cp) end

-- the categories found, as a sorted comma list ("" for none)
local function cats(text)
  local out = {}
  for c in pairs(detect.categories(text)) do out[#out + 1] = c end
  table.sort(out)
  return table.concat(out, ",")
end

-- "category/kind" of every finding, in order
local function kinds(text)
  local out = {}
  for _, f in ipairs(detect.scan(text)) do out[#out + 1] = f.category .. "/" .. f.kind end
  return table.concat(out, ",")
end

-- the matched text of each finding (for the tests only: callers never echo it)
local function matched(text)
  local n, out = detect.normalize(text), {}
  for _, f in ipairs(detect.scan(text)) do out[#out + 1] = n:sub(f.start, f.stop) end
  return out
end

-- prefix + the Luhn check digit that makes it valid
local function with_check(prefix)
  for d = 0, 9 do
    if detect.luhn(prefix .. d) then return prefix .. d end
  end
end

describe("detect.normalize", function()
  it("returns plain ASCII unchanged", function()
    local s = "Hello, 4111-1111 world"
    assert.equal(s, detect.normalize(s))
  end)

  it("folds full-width digits, letters and punctuation to ASCII", function()
    local fw = ""
    for _, c in utf8.codes("4111-SK") do fw = fw .. u(c + 0xFEE0) end
    assert.equal("4111-SK", detect.normalize(fw))
  end)

  it("removes zero-width and invisible characters", function()
    local s = "4" .. u(0x200B) .. "1" .. u(0x200C) .. "1" .. u(0x200D) .. "1" .. u(0x2060) .. "2" .. u(0xFEFF)
      .. "3" .. u(0x00AD) .. "4" .. u(0x180E) .. "5" .. u(0x2063) .. "6" .. u(0x200F) .. "7"
    assert.equal("4111234567", detect.normalize(s))
  end)

  it("turns odd spaces into a space and dashes into '-'", function()
    local s = "1" .. u(0xA0) .. "2" .. u(0x2002) .. "3" .. u(0x202F) .. "4" .. u(0x3000) .. "5"
      .. u(0x2010) .. "6" .. u(0x2013) .. "7" .. u(0x2014) .. "8" .. u(0x2212) .. "9"
    assert.equal("1 2 3 4 5-6-7-8-9", detect.normalize(s))
  end)

  it("folds Arabic-Indic, extended Arabic-Indic and Devanagari digits", function()
    local s = ""
    for i = 0, 9 do s = s .. u(0x0660 + i) end
    for i = 0, 9 do s = s .. u(0x06F0 + i) end
    for i = 0, 9 do s = s .. u(0x0966 + i) end
    assert.equal("012345678901234567890123456789", detect.normalize(s))
  end)

  it("leaves other text alone", function()
    local s = "Grüße, 東京 — ok"
    assert.equal("Grüße, 東京 - ok", detect.normalize(s))
  end)

  it("refuses a non-string", function()
    assert.has_error(function() detect.normalize(42) end)
    assert.has_error(function() detect.scan({}) end)
  end)
end)

describe("detect.scan findings", function()
  it("carry category, kind, start and stop, never the value", function()
    local fs = detect.scan("card 4111 1111 1111 1111 ok")
    assert.equal(1, #fs)
    local keys = {}
    for k, v in pairs(fs[1]) do
      keys[#keys + 1] = k
      if type(v) == "string" then assert.is_nil(v:find("%d")) end
    end
    table.sort(keys)
    assert.same({ "category", "kind", "start", "stop" }, keys)
    assert.same({ category = "card", kind = "visa", start = 6, stop = 24 }, fs[1])
  end)

  it("point into the normalized text, in order", function()
    local s = "mail a@example.com or " .. u(0xFF14) .. "111111111111111 or +14155550123"
    assert.same({ "a@example.com", "4111111111111111", "+14155550123" }, matched(s))
    assert.equal("email/email,card/visa,phone/e164", kinds(s))
  end)

  it("categories() is the set of categories", function()
    assert.same({ card = true, email = true }, detect.categories("4111111111111111 to a@example.com"))
    assert.same({}, detect.categories("nothing to see here"))
  end)
end)

describe("cards", function()
  it("finds Luhn-valid numbers of every network", function()
    local cases = {
      visa = { "4111111111111111", "4012888888881881", "4222222222222" },
      mastercard = { "5555555555554444", "5105105105105100", "2223003122003222" },
      amex = { "378282246310005", "371449635398431" },
      discover = { "6011111111111117", "6011000990139424" },
      diners = { "30569309025904", "38520000023237" },
      jcb = { "3530111333300000", "3566002020360505" },
      unionpay = { "6200000000000005" },
      maestro = { "6759649826438453" },
    }
    for brand, numbers in pairs(cases) do
      for _, n in ipairs(numbers) do
        assert.equal("card/" .. brand, kinds("pay with " .. n .. " please"), n)
      end
    end
  end)

  it("accepts single spaces or dashes between groups", function()
    assert.same({ "4111 1111 1111 1111" }, matched("4111 1111 1111 1111"))
    assert.same({ "4111-1111-1111-1111" }, matched("4111-1111-1111-1111"))
    assert.same({ "3782 822463 10005" }, matched("amex 3782 822463 10005."))
    assert.same({ "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1" }, matched("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"))
  end)

  it("finds a card inside a longer run of number groups", function()
    assert.same({ "4111 1111 1111 1111" }, matched("Order 12 4111 1111 1111 1111 thanks"))
    assert.equal("phone/nanp,card/visa", kinds("call 415-555-0123 4111 1111 1111 1111"))
  end)

  it("does not take a Luhn-invalid number for a card", function()
    assert.equal("", cats("4111111111111112"))
    assert.equal("", cats("4111 1111 1111 1112"))
    assert.equal("", cats("5555-5555-5555-4445"))
  end)

  it("skips one digit repeated, and numbers no card network uses", function()
    assert.equal("", cats("0000000000000000"))
    assert.equal("", cats("0000 0000 0000 0000"))
    assert.is_true(detect.luhn("6666666666666"))
    assert.equal("", cats("6666666666666"))
    assert.equal("", cats("6666 6666 6666 6"))
    local nine = with_check("911111111111111")
    assert.is_true(detect.luhn(nine))
    assert.equal("", cats(nine))
    local amex16 = with_check("371449635398431")
    assert.equal("", cats(amex16)) -- American Express numbers have 15 digits
  end)

  it("does not take order numbers, dates, prices or long ids for cards", function()
    for _, s in ipairs({
      "Order #12345678 ships today", "order 1234567890123 is late", "Meet on 2024-01-15 at 10:30",
      "Total $1,234.56 (USD 4,111.11)", "15/01/2024 12:00", "tracking 1Z999AA10123456784",
      "id 41111111111111111111111", "ref ID4111111111111111x", "the year 2024 2025 2026 2027",
    }) do
      assert.is_nil(detect.categories(s).card, s)
    end
  end)

  it("sees through normalization tricks", function()
    local fw = ""
    for c in ("4111111111111111"):gmatch(".") do fw = fw .. u(0xFF10 + tonumber(c)) end
    assert.equal("card", cats(fw))
    local zw = ("4111111111111111"):gsub(".", function(c) return c .. u(0x200B) end)
    assert.equal("card", cats(zw))
    assert.equal("card", cats("4111" .. u(0xA0) .. "1111" .. u(0x2013) .. "1111" .. u(0x2212) .. "1111"))
    local arabic = ("4111111111111111"):gsub("%d", function(c) return u(0x0660 + tonumber(c)) end)
    assert.equal("card", cats(arabic))
    local devanagari = ("4111111111111111"):gsub("%d", function(c) return u(0x0966 + tonumber(c)) end)
    assert.equal("card", cats(devanagari))
    assert.equal("card", cats("卡号4111111111111111"))
  end)

  it("exposes the Luhn check", function()
    assert.is_true(detect.luhn("79927398713"))
    assert.is_false(detect.luhn("79927398710"))
    assert.is_false(detect.luhn(""))
  end)
end)

describe("IBAN", function()
  it("finds valid IBANs, spaced in fours or in one run", function()
    for _, s in ipairs({
      "DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "GB82 WEST 1234 5698 7654 32",
      "FR14 2004 1010 0505 0001 3M02 606", "NL91ABNA0417164300", "BE68 5390 0754 7034",
      "CH93 0076 2011 6238 5295 7", "ES91 2100 0418 4502 0005 1332", "IT60 X054 2811 1010 0000 0123 456",
      "NO93 8601 1117 947", "PL61 1090 1014 0000 0712 1981 2874",
    }) do
      assert.same({ s }, matched("send it to " .. s .. " today"), s)
      assert.equal("iban", cats("send it to " .. s .. " today"), s)
    end
  end)

  it("stops at the country's length", function()
    assert.same({ "BE68 5390 0754 7034" }, matched("BE68 5390 0754 7034 ABCD"))
  end)

  it("does not take a wrong check digit or a wrong length for an IBAN", function()
    assert.equal("", cats("DE88 3704 0044 0532 0130 00"))
    assert.equal("", cats("DE89370400440532013001"))
    assert.equal("", cats("GB82 WEST 1234 5698 7654"))
    assert.is_false(detect.iban_valid("DE8937040044053201300")) -- one short of Germany's 22
    assert.is_false(detect.iban_valid("XX00"))
    assert.is_true(detect.iban_valid("GB82WEST12345698765432"))
  end)

  it("does not report the IBAN's digits as a card or phone", function()
    assert.equal("iban/iban", kinds("IBAN DE89 3704 0044 0532 0130 00"))
  end)
end)

describe("SSN", function()
  it("finds delimited numbers that follow the format rules", function()
    assert.equal("ssn", cats("536-22-8726"))
    assert.equal("ssn", cats("her number is 536 22 8726."))
    assert.equal("ssn", cats("SSN: 536-22-8726"))
  end)

  it("needs a context word before nine bare digits", function()
    assert.equal("", cats("order 536228726 shipped"))
    assert.equal("ssn", cats("my SSN is 536228726"))
    assert.equal("ssn", cats("Social Security number: 536228726"))
    assert.equal("ssn", cats("social-security 536228726"))
    assert.equal("ssn", cats("ss# 536228726"))
    assert.equal("ssn", cats("taxpayer id 536228726"))
    assert.equal("", cats("ssn is on file; order one two three four five 536228726"))
  end)

  it("rejects what the format rules exclude", function()
    for _, s in ipairs({
      "000-22-8726", "666-22-8726", "900-22-8726", "999-22-8726", "536-00-8726", "536-22-0000",
      "111-11-1111", "123-45-6789", "078-05-1120", "ssn 123456789", "ssn 078051120", "ssn 666228726",
    }) do
      assert.equal("", cats(s), s)
    end
  end)

  it("needs one delimiter throughout and no longer run", function()
    assert.equal("", cats("536-22 8726"))
    assert.equal("", cats("536-22-8726-1"))
    assert.equal("", cats("1-536-22-8726"))
    assert.is_true(detect.ssn_valid("536228726"))
    assert.is_false(detect.ssn_valid("53622872"))
  end)
end)

describe("email", function()
  it("finds addresses", function()
    assert.same({ "maria.lopez+test@example.co.uk" }, matched("write to maria.lopez+test@example.co.uk."))
    assert.same({ "a@example.com", "b_c@sub.example.org" }, matched("a@example.com, b_c@sub.example.org"))
  end)

  it("does not take handles or incomplete addresses for email", function()
    for _, s in ipairs({ "@maria", "ping me @ 5", "a@b", "user@localhost", "x@y.z", "a@.com", "a..b@example.com",
                         "a@example..com" }) do
      assert.equal("", cats(s), s)
    end
  end)
end)

describe("phone numbers in text", function()
  it("finds E.164 and common national forms", function()
    for _, s in ipairs({ "+14155550123", "+1 415-555-0123", "+1 (415) 555-0123", "+44 20 7946 0958",
                         "(415) 555-0123", "415-555-0123", "415.555.0123", "415 555 0123", "1-415-555-0123",
                         "020 7946 0958", "01 23 45 67 89" }) do
      assert.same({ s }, matched("call " .. s .. " now"), s)
      assert.equal("phone", cats("call " .. s .. " now"), s)
    end
  end)

  it("does not take other numbers for phones", function()
    for _, s in ipairs({ "4155550123", "+123 45", "415-555-0123-4567", "12 415 555 0123", "at 10:30 on 2024-01-15",
                         "room 415 555", "$415.55" }) do
      assert.is_nil(detect.categories(s).phone, s)
    end
  end)

  it("does not report a card as a phone", function()
    assert.equal("card/visa", kinds("4111 1111 1111 1111"))
    assert.equal("card/visa", kinds("+4111111111111111"))
  end)
end)

describe("secrets", function()
  local SK = "SK0123456789abcdef0123456789abcdef"
  local AC = "AC0123456789abcdef0123456789abcdef"
  local TOKEN = "9f86d081884c7d659a2feaa0c55ad015"

  it("finds a Twilio API key (SK + 32 hex, not low-entropy, not longer)", function()
    assert.equal("secret/api_key_sid", kinds("key " .. SK))
    assert.equal("", cats("SK" .. ("a"):rep(32)))
    assert.equal("", cats(SK .. "0"))
    assert.equal("", cats("XSK0123456789abcdef0123456789abcdef"))
  end)

  it("counts an Account SID only next to a token or the words token/secret/auth", function()
    assert.equal("", cats("account " .. AC))
    assert.equal("secret/account_credentials", kinds(AC .. " token"))
    assert.equal("secret/account_credentials", kinds("auth: " .. AC))
    assert.equal("secret/account_credentials", kinds(AC .. ":" .. TOKEN))
    assert.equal("", cats(AC .. (" "):rep(60) .. "token"))
  end)

  it("finds PEM private keys", function()
    local pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234\n-----END RSA PRIVATE KEY-----"
    assert.same({ pem }, matched("key:\n" .. pem .. "\nbye"))
    assert.equal("secret/pem_private_key", kinds("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r"))
    assert.equal("", cats("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq"))
  end)

  it("finds JWTs", function()
    local jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
      .. "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    assert.same({ jwt }, matched("Bearer " .. jwt))
    assert.equal("", cats("eyJhbGci.short.x"))
    assert.equal("", cats("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9 alone"))
  end)

  it("finds AWS access key ids", function()
    assert.equal("secret/aws_access_key", kinds("AKIAIOSFODNN7EXAMPLE"))
    assert.equal("secret/aws_access_key", kinds("id=ASIAIOSFODNN7EXAMPLE"))
    assert.equal("", cats("AKIAiosfodnn7example"))
    assert.equal("", cats("AKIAIOSFODNN7EXAMPLE1"))
  end)

  it("finds other well-known tokens", function()
    assert.equal("secret/github_token", kinds("ghp_" .. ("aB3"):rep(12)))
    assert.equal("secret/stripe_secret_key", kinds("sk_live_" .. ("4eC39HqLyjWDarjtT1zdp7dc"):rep(1)))
  end)

  it("sees through full-width letters and zero-width characters", function()
    local fw = ""
    for _, c in utf8.codes("SK0123456789") do fw = fw .. u(c + 0xFEE0) end
    assert.equal("secret", cats(fw .. "abcdef0123456789abcdef"))
    assert.equal("secret", cats("AKIA" .. u(0x200B) .. "IOSFODNN7EXAMPLE"))
  end)

  it("does not report the digits of a secret as anything else", function()
    assert.equal("secret/pem_private_key",
      kinds("-----BEGIN PRIVATE KEY-----\n/4111111111111111+\n-----END PRIVATE KEY-----"))
  end)

  local RANDOM = "Zk8qP2vR7xL4mN9tB3wY6cD1fH5jK0sA" -- 32 random characters

  it("finds a secret named by a keyword and given as a high-entropy token", function()
    local cases = {
      "the API key secret is " .. RANDOM,
      "api_key=" .. RANDOM,
      "apiKey: '" .. RANDOM .. "'",
      '{"client_secret": "' .. RANDOM .. '"}',
      "AUTH_TOKEN: 9f86d081884c7d659a2feaa0c55ad015",
      "Authorization: Bearer " .. RANDOM,
      "the password for the wifi is Xy7kLm2pQr9sT4vW.",
      "DB_PASSWORD => " .. RANDOM,
      "private key: " .. RANDOM .. "==",
      "access key was " .. RANDOM,
      "reset link https://example.com/r?token=" .. RANDOM,
    }
    for _, text in ipairs(cases) do
      assert.equal("secret/assigned_secret", kinds(text), text)
    end
    -- the finding is the token, and it hides the digits inside it
    assert.same({ "Xy7kLm2pQr9sT4vW" }, matched("the password for the wifi is Xy7kLm2pQr9sT4vW."))
    assert.equal("secret/assigned_secret", kinds("secret: Zk8qP2vR7xL4mN9tB3wY-4155550123-4111111111111111"))
  end)

  it("does not take ordinary English, numbers or identifiers for a secret", function()
    local cases = {
      "my password is in the drawer",
      "a token of appreciation for your help",
      "The secret is that we care about you, always and truly",
      "Your verification token is 482913",
      "Your auth code: 4829 1234 5678",
      "password is Supercalifragilisticexpialidocious",
      "secretary: Janet Smith-Jones",
      "token: SM0123456789abcdef0123456789abcdef",
      "the API key is stored in the vault",
      "token = aaaaaaaaaaaaaaaaaaaaaaaa1",
      "api key " .. RANDOM,                          -- no ':', '=' or ' is '
      "the password, as we said on the phone yesterday, is " .. RANDOM, -- too far from the keyword
      "token: " .. RANDOM:rep(7),                    -- longer than 200 characters
      "password: " .. RANDOM:sub(1, 15),             -- shorter than 16
    }
    for _, text in ipairs(cases) do
      assert.equal("", cats(text), text)
    end
  end)

  it("stays close to linear on long adversarial input", function()
    -- each text is 256 KiB of one repeated piece (with what the detectors
    -- look for around it); no detector may take more than a few ms per KiB
    -- (the first four took seconds per KiB here when they were quadratic)
    local size = 262144
    local cases = {
      { "x@a", "-.", "a" }, { "", "-----BEGIN PRIVATE KEY-----", "" }, { "-----BEGIN ", "PRIVATE KEY ", "" },
      { "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY ", "" }, { "", "a@a.", "" },
      { "", "token=", "" }, { "", "secret: ", "" }, { "", "1-", "" }, { "", "eyJ.", "" }, { "eyJ", "a", "" },
      { "", "AB12 ", "" }, { "", "123-45-6789 ", "" }, { "", "4111 ", "" },
    }
    for _, c in ipairs(cases) do
      local text = c[1] .. c[2]:rep((size - #c[1] - #c[3]) // #c[2]) .. c[3]
      local t0 = os.clock()
      detect.scan(text)
      local ms_per_kib = (os.clock() - t0) * 1000 / (#text / 1024)
      assert.truthy(ms_per_kib < 20, ("%q: %.1f ms per KiB"):format(c[2], ms_per_kib))
    end
  end)
end)

---------------------------------------------------------------------------
-- the policy

local SRC
local function load_gateway(settings)
  if not SRC then
    local f = assert(io.open(ROOT .. "/policies/safety_gateway.lua", "rb"))
    SRC = f:read("a")
    f:close()
  end
  return policy.load_source(SRC, "safety_gateway.lua", settings or {}, BUDGET)
end

-- Evaluate a call the way the pipeline does (read-only view, instruction
-- budget, tools and writes_only honoured).
local function run(call, settings)
  local p = assert(load_gateway(settings))
  local set = setmetatable({ list = { p }, budget = BUDGET }, policy)
  call.tool = call.tool or "twilio_send_sms"
  if call.writes == nil then call.writes = true end
  call.args = call.args or {}
  return set:evaluate(send_view(call))
end

local function sms(body, extra)
  local args = { to = "+14155550123", body = body }
  for k, v in pairs(extra or {}) do args[k] = v end
  return { tool = "twilio_send_sms", args = args }
end

local CARD, SK = "4111 1111 1111 1111", "SK0123456789abcdef0123456789abcdef"

describe("Safety Gateway policy", function()
  it("loads with the defaults and names what it applies to", function()
    local p = assert(load_gateway())
    assert.equal("safety_gateway", p.name)
    assert.same({ "sends" }, p.kinds)
    assert.is_nil(p.tools)
  end)

  it("allows a clean message", function()
    local d = run(sms("Your table for 4 is booked for 7pm on 2024-06-01. Reply STOP to opt out."))
    assert.equal("allow", d.decision)
    assert.same({ "safety_gateway" }, d.ran)
  end)

  it("applies the defaults: secret block, card/iban/ssn hold, email/phone flag", function()
    local cases = {
      { "key " .. SK, "deny", "what looks like a secret" },
      { "card " .. CARD, "hold", "what looks like a payment card number" },
      { "iban DE89 3704 0044 0532 0130 00", "hold", "what looks like a bank account number (IBAN)" },
      { "ssn 536-22-8726", "hold", "what looks like a US Social Security number" },
      { "write to maria@example.com", "flag", "an email address" },
      { "or call (415) 555-0123", "flag", "a phone number" },
    }
    for _, c in ipairs(cases) do
      local d = run(sms(c[1]))
      assert.equal(c[2], d.decision, c[1])
      local reason = d.reason or d.flags[1].reason
      assert.truthy(reason:find("the message body contains " .. c[3], 1, true), reason)
      assert.is_nil(reason:find("%d%d%d"), reason) -- never the value
      assert.is_nil(reason:find("maria", 1, true), reason)
    end
  end)

  it("refuses a secret in a WhatsApp template variable without echoing it", function()
    local d = run({ tool = "twilio_send_whatsapp", args = { to = "+14155550123", template_sid = "HX123",
      template_variables = { ["1"] = "Maria", ["2"] = "your key is " .. SK } } })
    assert.equal("deny", d.decision)
    assert.equal("safety_gateway", d.policy)
    assert.truthy(d.reason:find("template variable '2' contains what looks like a secret", 1, true), d.reason)
    assert.is_nil(d.reason:find("0123456789abcdef", 1, true))
    assert.is_nil(d.reason:find("template variable '1'", 1, true))
  end)

  it("scans template variable names too, without repeating a suspicious name", function()
    local d = run({ tool = "twilio_send_whatsapp", args = { to = "+14155550123", template_sid = "HX123",
      template_variables = { ["4111111111111111"] = "x" } } })
    assert.equal("hold", d.decision)
    assert.equal("the name of a template variable contains what looks like a payment card number", d.reason)
  end)

  it("scans the media URL", function()
    local d = run(sms("photo", { media_url = "https://example.com/c/4111111111111111.jpg" }))
    assert.equal("hold", d.decision)
    assert.equal("the media URL contains what looks like a payment card number", d.reason)
  end)

  it("does not act on the phone number a message is sent to", function()
    assert.equal("allow", run(sms("hello")).decision)
    assert.equal("allow", run({ tool = "twilio_send_whatsapp", args = { to = "+44 20 7946 0958", body = "hi" } })
      .decision)
  end)

  it("lets a verification code go to an email address, but not secrets or cards", function()
    local verify = function(to)
      return run({ tool = "twilio_verify_phone", action = "send_code", args = { action = "send_code", to = to,
        channel = "email" } })
    end
    assert.equal("allow", verify("maria@example.com").decision)
    assert.equal("allow", verify("+14155550123").decision)
    local d = verify(SK)
    assert.equal("deny", d.decision)
    assert.truthy(d.reason:find("the recipient contains what looks like a secret", 1, true))
    assert.equal("hold", verify(CARD).decision)
  end)

  it("does not run for check_code or read tools", function()
    local d = run({ tool = "twilio_verify_phone", action = "check_code", writes = false,
      args = { action = "check_code", to = "+14155550123", code = "123456" } })
    assert.equal("allow", d.decision)
    assert.same({}, d.ran)
    d = run({ tool = "twilio_search_messages", writes = false, args = { to = "+14155550123" } })
    assert.same({}, d.ran)
  end)

  it("takes the most severe action and names every finding and where", function()
    local d = run({ tool = "twilio_send_whatsapp", args = { to = "+14155550123",
      body = "mail maria@example.com, card " .. CARD, media_url = "https://example.com/?k=" .. SK } })
    assert.equal("deny", d.decision)
    assert.truthy(d.reason:find("the message body contains what looks like a payment card number and an email"
      .. " address", 1, true), d.reason)
    assert.truthy(d.reason:find("the media URL contains what looks like a secret", 1, true), d.reason)
    d = run(sms("card " .. CARD .. " or call 415-555-0123"))
    assert.equal("hold", d.decision)
  end)

  it("follows the operator's settings", function()
    assert.equal("deny", run(sms("write to maria@example.com"), { email = "block" }).decision)
    assert.equal("allow", run(sms("card " .. CARD), { card = "allow" }).decision)
    local d = run(sms("card " .. CARD), { card = "flag" })
    assert.equal("flag", d.decision)
    assert.equal("the message body contains what looks like a payment card number", d.flags[1].reason)
    assert.equal("hold", run(sms("call 415-555-0123"), { phone = "hold" }).decision)
    -- an allowed category is not mentioned next to one that acts
    d = run(sms("card " .. CARD .. " to maria@example.com"), { email = "allow" })
    assert.equal("the message body contains what looks like a payment card number", d.reason)
  end)

  it("refuses to load with a bad setting", function()
    local p, err = load_gateway({ card = "maybe" })
    assert.is_nil(p)
    assert.truthy(err:find("settings.card: must be allow, flag, hold or block", 1, true), err)
    p, err = load_gateway({ cards = "hold" })
    assert.is_nil(p)
    assert.truthy(err:find("unknown category 'cards'", 1, true), err)
  end)

  it("runs within the instruction budget for a 16 KiB body", function()
    local chunk = "Hi Maria, your order 55123 ships 2024-06-01; total $1,234.56. Questions? Reply here. "
    local body = chunk:rep(16384 // #chunk + 1):sub(1, 16384 - #CARD - 1) .. " " .. CARD
    assert.equal(16384, #body)
    local d = run(sms(body))
    assert.is_nil(d.failed, d.error)
    assert.equal("hold", d.decision)
    -- digit-heavy text is the expensive case
    for _, unit in ipairs({ "1 2 3 4 5 6 7 8 9 ", "4111 1111 1111 1111 ", "536-22-8726 ", "+1 415 555 0123 ",
                            "a@b.co ", "DE89 3704 0044 0532 0130 00 " }) do
      d = run(sms(unit:rep(16384 // #unit + 1):sub(1, 16384)))
      assert.is_nil(d.failed, unit .. ": " .. tostring(d.error))
    end
  end)
end)

describe("the detect library inside the policy sandbox", function()
  it("is available and read-only", function()
    local src = [[
      local n = detect.luhn("4111111111111111") and #detect.scan("4111111111111111")
      return { name = "t", priority = 1, check = function() return flag("n=" .. n) end }
    ]]
    local p = assert(policy.load_source(src, "t.lua", {}, BUDGET))
    assert.equal("n=1", p.check({}).reason)
    local p2, err = policy.load_source("detect.scan = nil return {}", "t2.lua", {}, BUDGET)
    assert.is_nil(p2)
    assert.truthy(err:find("read-only", 1, true), err)
  end)
end)
