-- Replays the corpus of each fuzz target (fuzz/corpus/<target>/*) through
-- the target without libFuzzer: `switchboard exec fuzz/replay.lua [TARGET...]`.
-- Prints one TAP line per target ("ok - …" / "not ok - …") and the
-- failing inputs; exit 1 when one failed. With --crashes first, replays
-- the saved reproducers of open defects (fuzz/crashes/<target>/*) instead:
-- each fails until its defect is fixed. $SB_FUZZ_DIR replaces fuzz/ as
-- the place of targets/, corpus/ and crashes/.
local lfs = require("lfs")
local root = os.getenv("SWITCHBOARD_HOME") or os.getenv("SB_ROOT") or "."
package.path = root .. "/?.lua;" .. package.path
local runner = require("fuzz.runner")
local fuzz_dir = os.getenv("SB_FUZZ_DIR") or (root .. "/fuzz")

local targets = { ... }
local set = "corpus"
if targets[1] == "--crashes" then
  set = "crashes"
  table.remove(targets, 1)
end
if #targets == 0 then
  for f in lfs.dir(fuzz_dir .. "/targets") do
    local name = f:match("^(.+)%.lua$")
    if name then targets[#targets + 1] = name end
  end
  table.sort(targets)
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local failed = 0
for _, name in ipairs(targets) do
  local dir = ("%s/%s/%s"):format(fuzz_dir, set, name)
  local files = {}
  if lfs.attributes(dir, "mode") == "directory" then
    for f in lfs.dir(dir) do
      if f:sub(1, 1) ~= "." and not f:match("%.md$") then files[#files + 1] = f end
    end
  end
  table.sort(files)
  local ok, check = pcall(runner.load, name, root, fuzz_dir)
  if not ok then
    failed = failed + 1
    print(("not ok - fuzz target %s does not load: %s"):format(name, tostring(check)))
  elseif #files == 0 and set == "crashes" then
    print(("ok - fuzz target %s: no saved crash"):format(name))
  elseif #files == 0 then
    failed = failed + 1
    print(("not ok - fuzz target %s: no corpus in %s"):format(name, dir))
  else
    local bad = {}
    for _, f in ipairs(files) do
      local held, err = check(read(dir .. "/" .. f))
      if not held then bad[#bad + 1] = ("  %s: %s"):format(f, err) end
    end
    if #bad == 0 then
      print(("ok - fuzz target %s: %d %s inputs hold"):format(name, #files, set))
    else
      failed = failed + 1
      print(("not ok - fuzz target %s: %d of %d %s inputs fail"):format(name, #bad, #files, set))
      print(table.concat(bad, "\n"))
    end
  end
end
collectgarbage()
return failed == 0 and 0 or 1
