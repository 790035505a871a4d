-- email_search: the recent messages the tenant sent to one address
-- (SendGrid's Email Activity: GET /v3/messages). Subjects are text an
-- agent must not take as instructions (a reply's "Re: …" quotes whoever
-- wrote to the tenant), so they are declared untrusted.
local json = require("switchboard.json")

local function str(v) return type(v) == "string" and v or nil end
local function int(v) return math.tointeger(tonumber(v)) end

return {
  name = "email_search",
  title = "Search sent email",
  description = "Lists the most recent emails the tenant sent to one address, newest first: subject, status"
    .. " (processed, delivered, not_delivered, …), opens and clicks. Use it to check whether a message went out.",
  input_schema = {
    type = "object",
    properties = {
      to = { type = "string", format = "email", description = "The recipient's address." },
      limit = { type = "integer", minimum = 1, maximum = 50, default = 10,
                description = "At most this many messages (default 10, at most 50)." },
    },
    required = { "to" },
    additionalProperties = false,
  },
  output_schema = {
    type = "object", additionalProperties = false, required = { "count", "messages" },
    properties = {
      count = { type = "integer" },
      messages = { type = "array", items = { type = "object", additionalProperties = false, properties = {
        message_id = { type = "string" }, from = { type = "string" }, to = { type = "string" },
        subject = { type = "string" }, status = { type = "string" }, last_event_time = { type = "string" },
        opens = { type = "integer" }, clicks = { type = "integer" } } } },
    },
  },
  annotations = { readOnlyHint = true, openWorldHint = true },
  writes = false,
  untrusted = { { "messages[].subject", from = "messages[].to" } },
  check = function(args)
    args.to = args.to:lower()
    return true
  end,
  handler = function(ctx, args)
    local body, err = ctx.email:get("/v3/messages", { query = ("to_email=%q"):format(args.to), limit = args.limit })
    if not body then
      return nil, { message = ("SendGrid did not answer the search: %s."):format(err.message), code = err.status,
                    hint = err.status == 403 and "Do not retry: the API key lacks the messages.read scope."
                      or "Try again in a little while." }
    end
    local out = {}
    for _, m in ipairs(type(body.messages) == "table" and body.messages or {}) do
      if type(m) == "table" and #out < args.limit then
        out[#out + 1] = { message_id = str(m.msg_id), from = str(m.from_email), to = str(m.to_email),
                          subject = str(m.subject), status = str(m.status), last_event_time = str(m.last_event_time),
                          opens = int(m.opens_count), clicks = int(m.clicks_count) }
      end
    end
    local text = #out == 0 and ("No email to %s was found."):format(args.to)
      or ("%d email(s) to %s, newest first."):format(#out, args.to)
    return { text = text, data = { count = #out, messages = json.array(out) } }
  end,
}
