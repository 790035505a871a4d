-- switchboard.time over core.time: ISO 8601 / RFC 2822 formatting and
-- parsing by libc (strptime, timegm, gmtime_r) and libcurl (curl_getdate).
-- Run: ./switchboard exec /usr/bin/busted tests/unit/time_spec.lua
local time = require "switchboard.time"

local LEAP_DAY = 1709211909 -- 2024-02-29T13:05:09Z

describe("switchboard.time", function()
  describe("writing", function()
    it("writes ISO 8601 UTC, a date and an RFC 2822 date", function()
      assert.equal("1970-01-01T00:00:00Z", time.iso(0))
      assert.equal("2024-02-29T13:05:09Z", time.iso(LEAP_DAY))
      assert.equal("2024-02-29", time.date(LEAP_DAY))
      assert.equal("Thu, 29 Feb 2024 13:05:09 +0000", time.rfc2822(LEAP_DAY))
      assert.equal("Thu, 01 Jan 1970 00:00:00 +0000", time.rfc2822(0))
      -- a float is floored, also before the epoch
      assert.equal("2024-02-29T13:05:09Z", time.iso(LEAP_DAY + 0.999))
      assert.equal("1969-12-31T23:59:59Z", time.iso(-0.5))
    end)

    it("writes far dates, and refuses times outside the years 0 to 9999", function()
      assert.equal("9999-12-31T23:59:59Z", time.iso(253402300799))
      assert.equal("0000-01-01T00:00:00Z", time.iso(-62167219200))
      assert.equal("1900-03-01", time.date(-2203891200))
      assert.has_error(function() time.iso(253402300800) end)
      assert.has_error(function() time.iso(-62167219201) end)
      assert.has_error(function() time.iso(0 / 0) end)
      assert.has_error(function() time.iso(math.huge) end)
      assert.has_error(function() time.iso("2024") end)
      assert.has_error(function() time.date(nil) end)
    end)

    it("now is the current time in the ISO format", function()
      local before = os.time()
      local now = time.now()
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", now)
      local t = assert(time.parse(now))
      assert.is_true(t >= before and t <= os.time())
      assert.is_true(math.type(time.unix()) == "integer")
    end)

    it("midnight and month_start", function()
      assert.equal(1709164800, time.midnight(LEAP_DAY))
      assert.equal("2024-02-29T00:00:00Z", time.iso(time.midnight(LEAP_DAY)))
      assert.equal(1709164800, time.midnight(1709164800))
      assert.equal("1969-12-31T00:00:00Z", time.iso(time.midnight(-1)))
      assert.equal("2024-02-01T00:00:00Z", time.iso(time.month_start(LEAP_DAY)))
      assert.equal("2023-12-01T00:00:00Z", time.iso(time.month_start(1704067199))) -- 2023-12-31T23:59:59Z
      assert.equal("1969-12-01T00:00:00Z", time.iso(time.month_start(-1)))
    end)

    it("timegm takes UTC fields, normalised as timegm(3)", function()
      assert.equal(1709164800, time.timegm(2024, 2, 29))
      assert.equal(LEAP_DAY, time.timegm(2024, 2, 29, 13, 5, 9))
      assert.equal("2024-12-31", time.date(time.timegm(2025, 1, 0)))
      assert.equal("2025-01-01", time.date(time.timegm(2024, 13, 1)))
      assert.equal("2023-03-01", time.date(time.timegm(2023, 2, 29)))
      assert.has_error(function() time.timegm(2024, 1) end)
      assert.has_error(function() time.timegm(2024, 1, 1.5) end)
    end)
  end)

  describe("parsing", function()
    local function ok(s, want, want_date)
      local t, is_date = time.parse(s)
      assert.equal(want, t, s)
      assert.equal(want_date or false, is_date, s)
    end
    local function bad(s, why)
      local t, err = time.parse(s)
      assert.is_nil(t, s)
      assert.equal(why, err, s)
    end

    it("reads ISO 8601 dates and date-times with Z, an offset or no zone", function()
      ok("2024-02-29", 1709164800, true)
      ok("2024-02-29T13:05:09Z", LEAP_DAY)
      ok("2024-02-29t13:05:09z", LEAP_DAY)
      ok("2024-02-29 13:05:09", LEAP_DAY)
      ok("2024-02-29T13:05:09.999Z", LEAP_DAY)
      ok("2024-02-29T13:05:09,5Z", LEAP_DAY)
      ok("2024-02-29T13:05Z", LEAP_DAY - 9)
      ok("2024-02-29T18:35:09+05:30", LEAP_DAY)
      ok("2024-02-29T18:35:09+0530", LEAP_DAY)
      ok("2024-02-29T05:05:09-08:00", LEAP_DAY)
      ok("2024-02-29T15:05:09+02", LEAP_DAY)
      ok("2024-02-29T13:05:09-00:00", LEAP_DAY)
      -- an offset that crosses midnight and the leap day
      ok("2024-03-01T03:05:09+14:00", LEAP_DAY)
      ok("2024-02-28T23:05:09-14:00", LEAP_DAY)
      ok("2024-03-01T00:00:00+00:00", 1709251200)
    end)

    it("reads leap days, far dates and dates before the epoch", function()
      ok("2000-02-29", 951782400, true)
      ok("1900-03-01", -2203891200, true)
      ok("1969-12-31T23:59:59Z", -1)
      ok("0000-01-01", -62167219200, true)
      ok("9999-12-31T23:59:59Z", 253402300799)
      ok("2400-02-29", 13574563200, true)
    end)

    it("refuses dates that do not exist", function()
      bad("2023-02-29", "no such date")
      bad("1900-02-29", "no such date")
      bad("2100-02-29", "no such date")
      bad("2024-04-31", "no such date")
      bad("2024-02-30T00:00:00Z", "no such date")
      bad("2024-13-01", "not an ISO 8601 date (YYYY-MM-DD)")
      bad("2024-00-10", "not an ISO 8601 date (YYYY-MM-DD)")
      bad("2024-01-32", "not an ISO 8601 date (YYYY-MM-DD)")
      bad("2024-01-00", "not an ISO 8601 date (YYYY-MM-DD)")
      bad("2024-02-29T23:59:60Z", "no such time of day")
      bad("2024-02-29T24:00:00Z", "not an ISO 8601 time (THH:MM[:SS] after the date)")
      bad("2024-02-29T12:60:00Z", "not an ISO 8601 time (THH:MM[:SS] after the date)")
    end)

    it("refuses malformed strings, naming what is wrong", function()
      local DATE, TIME = "not an ISO 8601 date (YYYY-MM-DD)", "not an ISO 8601 time (THH:MM[:SS] after the date)"
      local ZONE = "bad UTC offset (Z, +HH:MM or -HH:MM)"
      for _, s in ipairs({ "2024-1-05", "2024-01-5", "2024-01- 5", "2024- 1-05",
                           "2024-0105" }) do
        bad(s, DATE)
      end
      for _, s in ipairs({ "2024-01-05T", "2024-01-05T7:05:00Z", "2024-01-05T07", "2024-01-05T07:5",
                           "2024-01-05X07:05:00", "2024-01-05x", "2024-01-05T07:05:00.Z" }) do
        bad(s, TIME)
      end
      for _, s in ipairs({ "2024-01-05T07:05:00ZZ", "2024-01-05T07:05:00+24:00", "2024-01-05T07:05:00+5",
                           "2024-01-05T07:05:00+05:3", "2024-01-05T07:05:00+05:300", "2024-01-05T07:05:00 UTC",
                           "2024-01-05T07:05:00+05:60", "2024-01-05T07:05:00Z ", "2024-01-05T07:05:00+" }) do
        bad(s, ZONE)
      end
      bad("", "not an ISO 8601, RFC 2822 or HTTP date")
      bad("hello", "not an ISO 8601, RFC 2822 or HTTP date")
      bad("2024/01/05", "not an ISO 8601, RFC 2822 or HTTP date")
      bad(" 2024-01-05", "not an ISO 8601, RFC 2822 or HTTP date")
      bad("2024-01-05\0", "not a date (too long, or a NUL byte)")
      bad(("9"):rep(65), "not a date (too long, or a NUL byte)")
      assert.same({ nil, "not a date (expected a string)" }, { time.parse(42) })
      assert.same({ nil, "not a date (expected a string)" }, { time.parse(nil) })
    end)

    it("reads RFC 2822 and HTTP dates with curl_getdate", function()
      ok("Thu, 29 Feb 2024 13:05:09 +0000", LEAP_DAY)
      ok("Thu, 29 Feb 2024 05:05:09 -0800", LEAP_DAY)
      ok("Thu, 29 Feb 2024 13:05:09 GMT", LEAP_DAY)
      ok("29 Feb 2024 13:05:09 +0000", LEAP_DAY)
      ok("Fri, 24 May 2019 17:44:46 +0000", 1558719886)
      ok("Sunday, 06-Nov-94 08:49:37 GMT", 784111777)   -- RFC 850
      ok("Sun Nov  6 08:49:37 1994", 784111777)         -- asctime
      ok("Fri, 24 May 1800 17:44:46 +0000", -5352243314)
      bad("Fri, 24 Foo 2019 17:44:46 +0000", "not an ISO 8601, RFC 2822 or HTTP date")
      bad("Fri, 24 May 2019 25:44:46 +0000", "not an ISO 8601, RFC 2822 or HTTP date")
    end)

    it("parse_iso reads ISO 8601 only", function()
      assert.same({ LEAP_DAY, false }, { time.parse_iso("2024-02-29T13:05:09Z") })
      assert.same({ 1709164800, true }, { time.parse_iso("2024-02-29") })
      assert.same({ nil, "not an ISO 8601 date (YYYY-MM-DD)" }, { time.parse_iso("Thu, 29 Feb 2024 13:05:09 +0000") })
      assert.same({ nil, "not an ISO 8601 date (expected a string)" }, { time.parse_iso(false) })
    end)

    it("round-trips what it writes", function()
      for _, t in ipairs({ 0, -1, LEAP_DAY, 951782400, 253402300799, -62167219200, 4102444800 }) do
        assert.equal(t, (time.parse(time.iso(t))))
        -- curl_getdate's -1 means failure: it answers 0 for that one second;
        -- and it reads a year below 100 as 19xx or 20xx
        if t > -62167219200 then assert.equal(t == -1 and 0 or t, (time.parse(time.rfc2822(t)))) end
        assert.equal(time.midnight(t), (time.parse(time.date(t))))
      end
    end)
  end)
end)
