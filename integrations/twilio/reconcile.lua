-- Reconciliation of a Twilio send whose outcome is unknown (the request
-- went out and no answer came back): the recipient's messages since the
-- day before are listed, and the earliest one with the same text from the
-- same sender, created after the record and not another record's, is this
-- record's message. Only message sends are looked for (a verification code
-- cannot be found again). The core calls find through the manifest's
-- `reconcile` (switchboard.sends).
local json = require("switchboard.json")
local T = require("integrations.twilio.common")

local M = {}

-- The text a template send shows in the message list: the template's
-- text with its {{n}} placeholders filled (nil when it has no text).
local function template_text(c, sid, variables)
  local body = c:get("content", ("/v1/Content/%s"):format(sid))
  local types = type(body) == "table" and type(body.types) == "table" and body.types or nil
  local text
  for _, kind in ipairs({ "twilio/text", "twilio/media", "twilio/quick-reply", "twilio/call-to-action" }) do
    local t = types and types[kind]
    if type(t) == "table" and type(t.body) == "string" then text = t.body break end
  end
  if not text then return nil end
  local vars = type(variables) == "string" and json.decode(variables) or {}
  if type(vars) ~= "table" then vars = {} end
  return (text:gsub("{{%s*([%w_]+)%s*}}", function(k)
    local v = vars[k]
    if v == nil then return nil end
    return tostring(v)
  end))
end

-- What a template send is matched by: its SID and variables (the listed
-- message shows the rendered text, computed again at reconciliation).
function M.template_hash(sid, variables, body_hash)
  return "template:" .. body_hash(sid .. "\n" .. (variables or ""))
end

-- c: a client; req: the sealed request (product, path, form); row: the
-- send record. Returns the message SID, false, or nil, err.
function M.find(c, req, row, helpers)
  if not req.path or not req.path:find("/Messages.json", 1, true) then return nil, "not reconcilable" end
  if not row.body_hash then return nil, "nothing to match it by" end
  local form = req.form or {}
  local want = row.body_hash
  if want:find("^template:") then
    local text = template_text(c, form.ContentSid, form.ContentVariables)
    if not text then return nil, "its template's text could not be read" end
    want = helpers.body_hash(text)
  end
  local items = c:list("api", c:acct("Messages.json"), { To = form.To, ["DateSent>"] = T.date(row.created_unix - 60),
    PageSize = 100 }, "messages", 500)
  -- oldest first: the earliest unclaimed match is this record's message
  for i = #(items or {}), 1, -1 do
    local m = items[i]
    -- the same text from the same sender, created after this record was
    -- (a minute of clock skew allowed), and not already another record's
    local created = T.parse_rfc2822(m.date_created)
    if type(m.body) == "string" and helpers.body_hash(m.body) == want
      and (form.From == nil or m.from == nil or m.from == form.From)
      and created and created >= row.created_unix - 60
      and not helpers.claimed(m.sid) then
      return m.sid
    end
  end
  return false
end

return M
