-- Delivery receipts: Twilio's message status callbacks, read for the core
-- (switchboard.sends.receipt does the rest: the token, the wait for the
-- send to settle, forward-only updates, the audit record). Twilio signs
-- callbacks with the account's Auth Token, which this runtime never holds,
-- so the token in the callback URL is what authenticates one.
local M = {}

-- The order of Twilio's message statuses: a receipt applies only when it
-- moves the status forward; read (WhatsApp) follows delivered only.
M.RANK = { accepted = 0, scheduled = 0, queued = 0, sending = 1, sent = 2, delivered = 3,
           undelivered = 3, failed = 3, canceled = 3, read = 4 }
local FINAL_BAD = { undelivered = true, failed = true, canceled = true }
M.DELIVERED = { delivered = true, read = true }

-- A receipt of `status` may follow one of `prev` (ranked before it).
function M.can_follow(prev, status)
  return not (status == "read" and FINAL_BAD[prev])
end

-- One callback: form (decoded), headers (lowercase names), conn (the
-- tenant's connection, or nil). Returns { ref, status, error_code, key } or
-- nil, http status, why.
function M.parse(form, headers, conn)
  local function one(k) local v = form[k] if type(v) == "table" then return nil end return v end
  local sid, status = one("MessageSid"), one("MessageStatus")
  if type(sid) ~= "string" or not sid:match("^[SM]M%x+$") or #sid ~= 34 then
    return nil, 400, "MessageSid must be SM or MM followed by 32 hexadecimal characters"
  end
  if type(status) ~= "string" or not M.RANK[status] then
    return nil, 400, "MessageStatus is not a status of an outbound message"
  end
  local code = one("ErrorCode")
  if code ~= nil and code ~= "" then
    code = code:match("^%d+$") and math.tointeger(tonumber(code))
    if not code then return nil, 400, "ErrorCode must be a whole number" end
  else
    code = nil
  end
  local acct = one("AccountSid")
  if acct ~= nil and conn and conn.account_sid and acct ~= conn.account_sid then
    return nil, 403, "AccountSid is not the account of this send"
  end
  return { ref = sid, status = status, error_code = code, key = headers["i-twilio-idempotency-token"] }
end

return M
