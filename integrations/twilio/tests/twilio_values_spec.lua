-- The value conversions of the Twilio tools (integrations.twilio.common):
-- dates, numbers, nulls and truncation, the same whether a time is read
-- by switchboard.time or comes from the memo.
-- Run: ./switchboard exec /usr/bin/busted tests/unit/twilio_values_spec.lua
local json = require("switchboard.json")
local T = require("integrations.twilio.common")

describe("twilio tool values", function()
  it("converts Twilio times to ISO 8601 UTC, normalising what is out of range", function()
    local cases = {
      { "Tue, 01 Dec 2026 10:00:05 +0000", "2026-12-01T10:00:05Z" },
      { "Tue, 1 Dec 2026 10:00:05 +0000", "2026-12-01T10:00:05Z" },
      { "Tue, 01 Dec 2026 10:00:05", "2026-12-01T10:00:05Z" },
      { "Tue, 01 Dec 2026 23:30:00 -0800", "2026-12-02T07:30:00Z" },
      { "Mon, 01 Dec 2026 01:15:00 +0130", "2026-11-30T23:45:00Z" },
      { "Sat, 29 Feb 2024 23:59:59 +0000", "2024-02-29T23:59:59Z" },
      { "Sat, 29 Feb 2025 12:00:00 +0000", "2025-03-01T12:00:00Z" },
      { "Mon, 31 Apr 2026 12:00:00 +0000", "2026-05-01T12:00:00Z" },
      -- curl_getdate reads no hour 24: kept as given, as any unreadable time
      { "Tue, 01 Dec 2026 24:00:00 +0000", "Tue, 01 Dec 2026 24:00:00 +0000" },
      { "Tue, 31 Dec 2026 23:59:60 +0000", "2027-01-01T00:00:00Z" },
      { "Tue, 01 Dec 2026 10:00:05 GMT", "2026-12-01T10:00:05Z" },
      { "Tue, 01 Foo 2026 10:00:05 +0000", "Tue, 01 Foo 2026 10:00:05 +0000" },
      { "2026-12-01T10:00:05Z", "2026-12-01T10:00:05Z" },
      { "2026-12-01", "2026-12-01T00:00:00Z" },
      { "2026-12-01T10:00:05+02:00", "2026-12-01T08:00:05Z" },
      { "not a date", "not a date" },
    }
    for _ = 1, 2 do            -- the second round answers from the memo
      for _, c in ipairs(cases) do
        assert.equal(c[2], T.time(c[1]), c[1])
        assert.equal(T.iso(T.parse_time(c[1]) or 0), T.parse_time(c[1]) and c[2] or T.iso(0), c[1])
      end
    end
    assert.is_nil(T.time(json.null))
    assert.is_nil(T.time(""))
    assert.is_nil(T.time(nil))
  end)

  it("refuses a window date that does not exist instead of moving it", function()
    for _, bad in ipairs({ "2025-02-29", "2026-04-31", "2026-13-01", "2026-12-01T24:00:00Z", "2026-1-05" }) do
      local w, err = T.window(bad, nil, "date_sent_after", "date_sent_before")
      assert.is_nil(w, bad)
      assert.equal("`date_sent_after` must be an ISO 8601 date or date-time", err)
    end
    local w = assert(T.window("2024-02-29", "2024-02-29T12:00:00+01:00", "after", "before"))
    assert.equal("2024-02-29T00:00:00Z", T.iso(w.after))
    assert.equal("2024-02-29T11:00:00Z", T.iso(w.before))
    w = assert(T.window(nil, "2024-02-29", "after", "before"))
    assert.equal("2024-02-29T23:59:59Z", T.iso(w.before))
    assert.equal(T.date(os.time()), T.today())
    assert.equal(T.date(os.time()):sub(1, 8) .. "01", T.month_start())
  end)

  it("reads numbers, nulls and strings as before", function()
    assert.equal(0, T.int("0"))
    assert.equal(math.type(T.int("1")), "integer")
    assert.equal(0.0079, T.price("-0.0079"))
    assert.equal(3, T.num("3.0"))
    assert.equal("integer", math.type(T.num("3.0")))
    assert.equal(3.5, T.num(3.5))
    assert.is_nil(T.num("abc"))
    assert.is_nil(T.num(json.null))
    assert.is_nil(T.num(""))
    assert.equal("5", T.str(5))
    assert.is_nil(T.str(json.null))
    assert.is_nil(T.str(""))
    assert.equal("", T.v(""))
    assert.is_nil(T.v("", true))
  end)

  it("truncates by characters, not bytes", function()
    local e = ("é"):rep(160)
    assert.equal(e, T.truncate(e, 160))
    local long = ("é"):rep(161)
    assert.equal(("é"):rep(159) .. "…", T.truncate(long, 160))
    assert.equal(("a"):rep(160), T.truncate(("a"):rep(160), 160))
    assert.equal(("a"):rep(159) .. "…", T.truncate(("a"):rep(161), 160))
  end)
end)
