-- switchboard.time: the one place timestamps are written and read.
--
-- Times are integer seconds since the epoch, UTC. Written as ISO 8601 UTC
-- ("2024-02-29T13:05:09Z", the format of every stored and returned
-- timestamp) or a date ("2024-02-29"); read from ISO 8601 (a date, or a
-- date-time with Z or an offset), RFC 2822 and HTTP dates. The parsing is
-- libc's strptime/timegm and libcurl's curl_getdate, in core.time.
local ctime = require "core.time"

local M = {}

M.FORMAT = "%Y-%m-%dT%H:%M:%SZ" -- what iso() writes (for documentation)

-- The current time: M.now() as ISO 8601 UTC, M.unix() as seconds.
function M.now() return ctime.iso(ctime.now()) end
M.unix = ctime.now

-- t (seconds; a float is floored) as "YYYY-MM-DDTHH:MM:SSZ" / "YYYY-MM-DD"
-- / "Thu, 29 Feb 2024 13:05:09 +0000". Raises outside the years 0 to 9999.
M.iso = ctime.iso
M.date = ctime.date
M.rfc2822 = ctime.rfc2822

-- s as seconds since the epoch and whether s was a date only, or nil, err.
-- parse takes ISO 8601 (when s starts "YYYY-"), else RFC 2822 or an HTTP
-- date; parse_iso only ISO 8601. An ISO date-time without a zone is UTC.
function M.parse(s)
  if type(s) ~= "string" then return nil, "not a date (expected a string)" end
  return ctime.parse(s)
end

function M.parse_iso(s)
  if type(s) ~= "string" then return nil, "not an ISO 8601 date (expected a string)" end
  return ctime.parse_iso(s)
end

-- 00:00:00 UTC of t's day, and of the first day of t's month.
function M.midnight(t)
  t = math.floor(t)
  return t - t % 86400
end
M.month_start = ctime.month_start

-- The UTC fields as seconds since the epoch (timegm(3): out-of-range
-- fields are normalised, day 0 is the last day of the month before).
M.timegm = ctime.timegm

return M
