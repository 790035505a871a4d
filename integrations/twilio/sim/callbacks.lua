-- Status callbacks, as Twilio posts them: a message created with a
-- StatusCallback URL gets a form-encoded POST there for each status it
-- reaches (sent at once, then its final status once it settles, and read
-- after delivered for WhatsApp), with MessageSid, SmsSid, MessageStatus,
-- SmsStatus, ErrorCode (when there is one), AccountSid, From, To and
-- ApiVersion, and an I-Twilio-Idempotency-Token header. For tests:
-- settings.callback_retries posts each one that many more times (the same
-- token, as Twilio's retries do), settings.callback_order = "reversed"
-- posts them newest first once the message has settled, and
-- settings.callback_delay_ms waits before the first. Not signed: the
-- runtime that receives them never holds the Auth Token. Every attempt is
-- logged in st.callbacks (GET /__sim/callbacks).
local loop = require("core.loop")
local http = require("core.http")
local vault = require("core.vault")
local S = require("integrations.twilio.sim.state")

local M = {}

local function post(st, msg, status, code)
  local form = { MessageSid = msg.sid, SmsSid = msg.sid, MessageStatus = status, SmsStatus = status,
                 AccountSid = msg.account_sid, From = msg.from, To = msg.to, ApiVersion = "2010-04-01" }
  if code then form.ErrorCode = tostring(code) end
  local token = vault.hex(vault.random(16))
  local retries = math.tointeger(st.settings.callback_retries) or 0
  for attempt = 1, 1 + math.max(0, retries) do
    local res, err = http.request({ method = "POST", url = msg.status_callback, form = form, timeout = 10,
      headers = { ["I-Twilio-Idempotency-Token"] = token, ["User-Agent"] = "TwilioProxy/1.1" } })
    local log = st.callbacks
    log[#log + 1] = { sid = msg.sid, status = status, attempt = attempt, error_code = code,
                      http_status = res and res.status or 0, error = not res and tostring(err) or nil,
                      t = loop.now() }
  end
end

-- The callbacks of a message just created (msg.final: its end state).
function M.schedule(st, msg)
  if not msg.status_callback or msg.status_callback == "" then return end
  st.callbacks = st.callbacks or {}
  local fin = msg.final or { status = msg.status, error_code = msg.error_code }
  local events = { { "sent" }, { fin.status, fin.error_code } }
  if fin.status == "delivered" and msg.to:match("^whatsapp:") then events[#events + 1] = { "read" } end
  local reversed = st.settings.callback_order == "reversed"
  loop.spawn(function()
    local delay = (tonumber(st.settings.callback_delay_ms) or 0) / 1000
    if delay > 0 then loop.sleep(delay) end
    if reversed then
      loop.sleep(math.max(0, msg.settle_at - S.now(st)))
      for i = #events, 1, -1 do post(st, msg, events[i][1], events[i][2]) end
      return
    end
    post(st, msg, events[1][1])
    loop.sleep(math.max(0, msg.settle_at - S.now(st)))
    for i = 2, #events do post(st, msg, events[i][1], events[i][2]) end
  end)
end

return M
