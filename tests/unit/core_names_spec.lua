-- The core names no integration: everything that is Twilio's lives in its
-- package (integrations/twilio/). A grep over the core runtime (the C core,
-- the Lua runtime, the policies, the entry point) finds no integration's
-- name, so a second integration needs no core change.
local lfs = require("lfs")

local ROOT = os.getenv("SB_ROOT") or "."
local TREES = { "core", "lua", "policies", "runtime.lua" }

local function files(tree, out)
  local full = ROOT .. "/" .. tree
  local mode = lfs.attributes(full, "mode")
  if mode == "file" and (tree:match("%.lua$") or tree:match("%.[ch]$") or tree:match("%.cc$")) then
    out[#out + 1] = tree
  elseif mode == "directory" then
    for name in lfs.dir(full) do
      if name ~= "." and name ~= ".." then files(tree .. "/" .. name, out) end
    end
  end
  return out
end

local function mentions(names)
  local found = {}
  for _, tree in ipairs(TREES) do
    for _, path in ipairs(files(tree, {})) do
      local f = assert(io.open(ROOT .. "/" .. path, "rb"))
      local n = 0
      for line in f:lines() do
        n = n + 1
        local low = line:lower()
        for _, name in ipairs(names) do
          if low:find(name, 1, true) then found[#found + 1] = ("%s:%d: %s"):format(path, n, name) end
        end
      end
      f:close()
    end
  end
  return found
end

describe("the core runtime", function()
  it("names no integration package", function()
    local names = {}
    for name in lfs.dir(ROOT .. "/integrations") do
      if name:sub(1, 1) ~= "." and lfs.attributes(ROOT .. "/integrations/" .. name .. "/init.lua") then
        names[#names + 1] = name
      end
    end
    assert.is_true(#names > 0)
    assert.are.same({}, mentions(names))
  end)

  it("the check finds a name", function()
    assert.is_true(#mentions({ "switchboard" }) > 0)
  end)
end)
