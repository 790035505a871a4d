-- Reconciliation of a send whose outcome is unknown (the request went out,
-- no answer came back): the recipient's recent messages (GET /v3/messages)
-- are searched for the earliest one from the same sender with the same
-- subject, seen after the record was made and not another record's. The
-- core calls find through the manifest's `reconcile` (switchboard.sends).
local time = require("switchboard.time")

local M = {}

-- c: a client; req: the sealed request { to, from, subject }; row: the send
-- record. Returns the message id (as X-Message-Id gave it), false, or nil, err.
function M.find(c, req, row, helpers)
  if type(req.to) ~= "string" or type(req.subject) ~= "string" then return nil, "nothing to match it by" end
  local body, err = c:get("/v3/messages", { query = ("to_email=%q"):format(req.to), limit = 100 })
  if not body then return nil, err.message end
  local list = type(body.messages) == "table" and body.messages or {}
  -- newest first: the earliest unclaimed match is this record's message
  for i = #list, 1, -1 do
    local m = list[i]
    local id = type(m) == "table" and type(m.msg_id) == "string" and m.msg_id:match("^[^.]+")
    local seen = id and time.parse_iso(tostring(m.last_event_time))
    if seen and m.subject == req.subject and (req.from == nil or m.from_email == req.from)
      and seen >= row.created_unix - 60 and not helpers.claimed(id) then
      return id
    end
  end
  return false
end

return M
