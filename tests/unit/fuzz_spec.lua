-- The fuzz runner's contract (fuzz/runner.lua, shared by the libFuzzer
-- harness and the corpus replay): an error a target declares expected
-- passes, any other error or broken invariant fails, and the replay says
-- which input failed.
local H = require("helpers")

package.path = H.ROOT .. "/?.lua;" .. package.path
local runner = require("fuzz.runner")

local TARGET = [[
local runner = require("fuzz.runner")
return function(bytes)
  if bytes == "reject" then runner.reject("not for this target") end
  if bytes == "raise" then error("boom") end
  assert(bytes ~= "broken", "invariant broken")
end
]]

local function fuzz_dir()
  local dir = H.tmpdir("fuzz")
  H.sh("mkdir -p " .. H.q(dir .. "/targets") .. " " .. H.q(dir .. "/corpus/t"))
  H.write(dir .. "/targets/t.lua", TARGET)
  return dir
end

describe("fuzz runner", function()
  it("passes inputs that hold and errors the target declares expected", function()
    local check = runner.load("t", H.ROOT, fuzz_dir())
    assert.is_true(check("fine"))
    assert.is_true(check("reject"))
  end)

  it("fails on an unexpected error and on a broken invariant, naming the target and the cause", function()
    local check = runner.load("t", H.ROOT, fuzz_dir())
    local ok, err = check("raise")
    assert.is_false(ok)
    assert.matches("target t: .*boom", err)
    ok, err = check("broken")
    assert.is_false(ok)
    assert.matches("invariant broken", err)
  end)

  it("replay prints ok for a corpus that holds and not ok with the failing file otherwise", function()
    local dir = fuzz_dir()
    H.write(dir .. "/corpus/t/good", "fine")
    H.write(dir .. "/corpus/t/expected", "reject")
    local cmd = ("SB_FUZZ_DIR=%s SWITCHBOARD_HOME=%s %s exec %s/fuzz/replay.lua t 2>&1"):format(
      H.q(dir), H.q(H.ROOT), H.q(H.BIN), H.q(H.ROOT))
    local out, code = H.sh(cmd)
    assert.equal(0, code)
    assert.matches("^ok %- fuzz target t: 2 corpus inputs hold", out)
    H.write(dir .. "/corpus/t/bad", "raise")
    out, code = H.sh(cmd)
    assert.are_not.equal(0, code)
    assert.matches("not ok %- fuzz target t: 1 of 3 corpus inputs fail", out)
    assert.matches("bad: target t: .*boom", out)
  end)
end)
