-- The media_url allow-list of the Twilio send tools (tool_settings.<tool>.media_domains).
local T = require("integrations.twilio.common")

describe("media_url allow-list", function()
  local function check(domains, url)
    return T.media_check({ tool_name = "twilio_send_sms", settings = { media_domains = domains } }, { media_url = url })
  end

  it("admits the listed domains and their subdomains only", function()
    assert.is_true(check({ "media.example.com" }, "https://cdn.media.example.com/a.png"))
    assert.is_true(check(nil, "https://example.org/a.png"))
    local ok, err = check({ "media.example.com" }, "https://example.org/a.png")
    assert.is_nil(ok)
    assert.truthy(err.message:find("allowed media domains (media.example.com)", 1, true), err.message)
  end)

  it("accepts no media_url when media_domains is not a list", function()
    local ok, err = check("media.example.com", "https://media.example.com/a.png")
    assert.is_nil(ok)
    assert.truthy(err.message:find("tool_settings.twilio_send_sms.media_domains is not a list", 1, true), err.message)
  end)
end)
