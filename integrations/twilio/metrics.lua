-- The Twilio integration's series on /metrics.
local client = require("integrations.twilio.client")

local M = {}

function M.render(add, num)
  add("# HELP switchboard_twilio_retries_total Twilio requests retried after a 429.")
  add("# TYPE switchboard_twilio_retries_total counter")
  add("switchboard_twilio_retries_total ", num(client.retries_total))
end

return M
