-- core.jsonint: the in-place walk that turns the whole-number floats of a
-- decoded JSON tree into integers (cjson decodes every number as a float).
local jsonint = require("core.jsonint")
local json = require("switchboard.json")
local cjson = require("cjson")

describe("core.jsonint.integers", function()
  it("converts whole-number floats at every depth, in place, and returns its argument", function()
    local inner = { 7.0, { 8.0 } }
    local t = { a = 1.0, b = { c = { d = inner } }, [1] = 2.0 }
    assert.equal(t, jsonint.integers(t))
    assert.equal("integer", math.type(t.a))
    assert.equal("integer", math.type(t[1]))
    assert.equal(inner, t.b.c.d)
    assert.equal("integer", math.type(inner[1]))
    assert.equal("integer", math.type(inner[2][1]))
    assert.equal(8, inner[2][1])
  end)

  it("keeps fractions, values beyond ±2^53, NaN and infinities as floats", function()
    local t = { 2.5, 2.0 ^ 53, -(2.0 ^ 53), 1e300, 0 / 0, math.huge, -math.huge, (2.0 ^ 53) - 1 }
    jsonint.integers(t)
    for i = 1, 7 do assert.equal("float", math.type(t[i]), "index " .. i) end
    assert.equal("integer", math.type(t[8]))
    assert.equal(9007199254740991, t[8])
  end)

  it("turns -0.0 into 0 and leaves integers, strings, booleans and cjson.null alone", function()
    local t = { -0.0, 3, "4", true, cjson.null }
    jsonint.integers(t)
    assert.equal("integer", math.type(t[1]))
    assert.equal(0, t[1])
    assert.equal(3, t[2])
    assert.equal("4", t[3])
    assert.is_true(t[4])
    assert.equal(cjson.null, t[5])
  end)

  it("returns a non-table as it is, a whole float as an integer", function()
    assert.equal("integer", math.type(jsonint.integers(5.0)))
    assert.equal("float", math.type(jsonint.integers(5.5)))
    assert.equal("x", jsonint.integers("x"))
    assert.equal(false, jsonint.integers(false))
    assert.has_error(function() jsonint.integers() end)
  end)

  it("ignores metamethods (raw access)", function()
    local seen = 0
    local t = setmetatable({ 1.0 }, { __newindex = function() seen = seen + 1 end })
    jsonint.integers(t)
    assert.equal(0, seen)
    assert.equal("integer", math.type(t[1]))
  end)

  it("raises on a cycle instead of recursing without end", function()
    local t = { 1.0 }
    t[2] = t
    assert.has_error(function() jsonint.integers(t) end,
      "jsonint.integers: tables nested deeper than 200 (a cycle?)")
  end)

  it("is what json.decode applies: integers survive a round trip", function()
    local v = json.decode('{"id":5,"n":[1,2.5,{"x":-3}],"big":9007199254740993}')
    assert.equal("integer", math.type(v.id))
    assert.equal("integer", math.type(v.n[3].x))
    assert.equal("float", math.type(v.n[2]))
    assert.equal("float", math.type(v.big))
    assert.equal('{"id":5}', json.encode({ id = json.decode("5") }))
  end)
end)
