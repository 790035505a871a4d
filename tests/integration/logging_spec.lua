-- log.format = "json" (one JSON object a line) and the log file reopened
-- on SIGHUP, as logrotate needs: a real server process and real files.
local H = require("helpers")
local json = require("switchboard.json")

describe("logging", function()
  it("writes JSON lines with log.format = json and reopens log.file on SIGHUP", function()
    local dir = H.tmpdir("logjson")
    local logf = dir .. "/server.log"
    local srv = H.server({ dir = dir, config = { log = { level = "info", file = logf, format = "json" } } })
    local first = H.read(logf)
    local n = 0
    for line in first:gmatch("[^\n]+") do
      local v = assert(json.decode(line), "not JSON: " .. line)
      assert.is_string(v.time)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", v.time)
      assert.is_truthy(({ info = true, warn = true, error = true })[v.level])
      assert.is_string(v.msg)
      n = n + 1
    end
    assert.is_true(n >= 1)
    assert.matches("switchboard serving", first)
    -- logrotate: move the file away, then SIGHUP
    assert(os.rename(logf, logf .. ".1"))
    srv.signal("HUP")
    H.wait_for(function() return (H.read(logf) or ""):find("reloaded", 1, true) ~= nil end, 10,
      "the reopened log file")
    local mode = H.sh("stat -c %a " .. H.q(logf))
    assert.equal("600", (mode:gsub("%s+$", "")))
    local again = assert(json.decode(H.read(logf):match("[^\n]+")))
    assert.equal("info", again.level)
    -- the rotated file got nothing after the move
    assert.is_nil((H.read(logf .. ".1") or ""):find("reloaded", 1, true))
    srv.stop()
  end)

  it("refuses an unknown log.format", function()
    local cfg = require("switchboard.config")
    local c, err = cfg.build({ log = { format = "xml" } }, H.ROOT)
    assert.is_nil(c)
    assert.matches("log.format", err)
  end)
end)
