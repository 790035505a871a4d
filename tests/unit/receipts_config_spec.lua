-- http.public_url: checked at load, and the callback base built from it.
local config = require("switchboard.config")
local sends = require("switchboard.sends")

local ROOT = os.getenv("SB_ROOT") or "."

describe("http.public_url", function()
  it("needs http.listen", function()
    local cfg, err = config.build({ http = { public_url = "https://sb.example.com" } }, ROOT)
    assert.is_nil(cfg)
    assert.truthy(err:find("'http.public_url' needs 'http.listen'", 1, true), err)
  end)

  it("must be an http(s) URL", function()
    local cfg, err = config.build({ http = { listen = "127.0.0.1:8080", public_url = "sb.example.com" } }, ROOT)
    assert.is_nil(cfg)
    assert.truthy(err:find("'http.public_url' has an invalid value", 1, true), err)
  end)

  it("gives the callback base, without a trailing slash, or nothing when unset", function()
    local cfg = assert(config.build({ http = { listen = "127.0.0.1:8080", public_url = "https://sb.example.com/" } },
      ROOT))
    assert.equals("https://sb.example.com/twilio/status", sends.callback_base({ cfg = cfg }, "twilio"))
    assert.is_nil(sends.callback_base({ cfg = assert(config.build({}, ROOT)) }, "twilio"))
  end)
end)
