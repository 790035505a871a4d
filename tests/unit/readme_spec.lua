-- README.md tells what the tree holds: the core table under "How a call
-- flows" names every file of core/, and the configuration table under
-- "Configuration" every key of config.spec (walked from the spec, so a new
-- C file or key without its line fails here).
local H = require("helpers")
local config = require("switchboard.config")
local lfs = require("lfs")

local README = H.read(H.ROOT .. "/README.md")

-- The text of the "## title" section, up to the next "## ".
local function section(title)
  local start = assert(README:find("\n## " .. title .. "\n", 1, true), "no section " .. title)
  local stop = README:find("\n## ", start + 1, true) or #README
  return README:sub(start, stop)
end

describe("README", function()
  it("names every core/ file in the table of How a call flows", function()
    local text, missing = section("How a call flows"), {}
    for f in lfs.dir(H.ROOT .. "/core") do
      if f:match("%.c$") or f:match("%.cc$") or f:match("%.h$") then
        if not text:find("`core/" .. f .. "`", 1, true) then missing[#missing + 1] = "core/" .. f end
      end
    end
    table.sort(missing)
    assert.are.same({}, missing)
  end)

  it("has every configuration key in the table of Configuration", function()
    local text, missing = section("Configuration"), {}
    local function walk(fields, prefix)
      for k, f in pairs(fields) do
        local name = prefix .. k
        if f.type == "table" and f.fields then
          walk(f.fields, name .. ".")
        elseif not text:find("`" .. name .. "`", 1, true) and not text:find("`" .. name .. ".", 1, true) then
          missing[#missing + 1] = name
        end
      end
    end
    walk(assert(config.full_spec(os.getenv("SB_ROOT") or ".")), "")
    table.sort(missing)
    assert.are.same({}, missing)
  end)
end)
