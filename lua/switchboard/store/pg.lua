-- The PostgreSQL store: a small pool of core.pg connections with the
-- method names of the SQLite handle (core.store's Db), so that a repository
-- runs on either:
--
--   db:query(sql, ...)  -> array of rows | nil, err   (db:rows is the same)
--   db:row(sql, ...)    -> first row | nil | nil, err
--   db:run(sql, ...)    -> change count | nil, err
--   db:insert(sql, ...) -> the new row's id (RETURNING id) | nil, err
--   db:exec(sql)        -> true | nil, err   (several statements, no parameters)
--   db:begin(), db:commit(), db:rollback(), db:in_transaction(),
--   db:transaction(fn)  -> true | nil, err
--
-- Parameters are the SQLite handle's positional `?`; each statement text is
-- translated to $1..$n once (cached). Every call waits for its connection
-- and its result, so it must run in a runtime coroutine.
--
-- A call takes a connection from the pool (opening one when fewer than
-- `size` are open, else waiting its turn, at most `acquire_timeout`
-- seconds) and gives it back when it returns. A transaction keeps its
-- connection for the coroutine that opened it: every call that coroutine
-- makes until the COMMIT or ROLLBACK goes to that connection, so begin,
-- commit and in_transaction mean what they mean on SQLite, per coroutine.
-- A connection that was lost (the server restarted, a network cut) or
-- comes back still inside a transaction is closed, never reused; the next
-- call opens a new one, so the pool serves again as soon as the server
-- does, and while it cannot, every call answers nil, "postgresql: …".
local pg = require("core.pg")
local loop = require("core.loop")

local M = {}

-- {======================================================
-- `?` -> $n
-- =======================================================

local translated, ntranslated = {}, 0
local TRANSLATE_MAX = 1024

-- The statement with its `?` numbered $1..$n; a `?` inside a string
-- literal, a quoted identifier or a comment stays as it is.
local function number_placeholders(sql)
  local out, n, i, len = {}, 0, 1, #sql
  local start = 1
  while i <= len do
    local ch = sql:sub(i, i)
    if ch == "?" then
      n = n + 1
      out[#out + 1] = sql:sub(start, i - 1)
      out[#out + 1] = "$" .. n
      i = i + 1
      start = i
    elseif ch == "'" or ch == '"' then
      -- to the closing quote ('' or "" inside are the quote itself)
      local j = i + 1
      while true do
        local k = sql:find(ch, j, true)
        if not k then i = len + 1 break end
        if sql:sub(k + 1, k + 1) == ch then
          j = k + 2
        else
          i = k + 1
          break
        end
      end
    elseif ch == "-" and sql:sub(i + 1, i + 1) == "-" then
      local k = sql:find("\n", i + 2, true)
      i = k and k + 1 or len + 1
    elseif ch == "/" and sql:sub(i + 1, i + 1) == "*" then
      local k = sql:find("*/", i + 2, true)
      i = k and k + 2 or len + 1
    else
      i = i + 1
    end
  end
  out[#out + 1] = sql:sub(start)
  return table.concat(out)
end

function M.translate(sql)
  local t = translated[sql]
  if t then return t end
  t = number_placeholders(sql)
  if ntranslated >= TRANSLATE_MAX then
    translated, ntranslated = {}, 0
  end
  translated[sql] = t
  ntranslated = ntranslated + 1
  return t
end

-- An INSERT without a RETURNING clause returns its id.
local inserts, ninserts = {}, 0
local function returning_id(sql)
  local t = inserts[sql]
  if t then return t end
  t = M.translate(sql)
  if not t:upper():find("%f[%w]RETURNING%f[%W]") then
    t = t:gsub("[%s;]+$", "") .. " RETURNING id"
  end
  if ninserts >= TRANSLATE_MAX then inserts, ninserts = {}, 0 end
  inserts[sql] = t
  ninserts = ninserts + 1
  return t
end

-- }======================================================

local Pool = {}
Pool.__index = Pool
local Tx

-- opts: conninfo (a libpq connection string or a postgresql:// URL, with no
-- password in it), password_file, size (connections, default 4),
-- connect_timeout (seconds, default 10), acquire_timeout (seconds a call
-- waits for a free connection, default 10).
function M.new(opts)
  if type(opts) ~= "table" then error("store.pg.new: expected a table of options", 2) end
  if type(opts.conninfo) ~= "string" or opts.conninfo == "" then
    error("store.pg.new: opts.conninfo: expected a connection string or postgresql:// URL", 2)
  end
  if opts.password_file ~= nil and type(opts.password_file) ~= "string" then
    error("store.pg.new: opts.password_file: expected a path", 2)
  end
  local size = opts.size or 4
  if math.type(size) ~= "integer" or size < 1 then
    error("store.pg.new: opts.size: expected a positive integer", 2)
  end
  return setmetatable({
    conninfo = opts.conninfo,
    connect_opts = { password_file = opts.password_file, connect_timeout = opts.connect_timeout },
    size = size,
    acquire_timeout = opts.acquire_timeout or 10,
    idle = {},              -- connections nobody uses
    open = 0,               -- connections open or being opened
    waiters = {},           -- coroutines waiting for a connection, in order
    tx = setmetatable({}, { __mode = "k" }),  -- coroutine -> its transaction's connection
    subscriptions = {},
    closed = false,
  }, Pool)
end

local function usable(c)
  return c:status() == "idle" and c:transaction_status() == "idle"
end

local function wake_next(self)
  while #self.waiters > 0 do
    local w = table.remove(self.waiters, 1)
    if not w.done then
      w.woken = true
      if loop.wake(w.co) then return end
    end
  end
end

-- A connection for the calling coroutine, or nil, err.
function Pool:acquire()
  if self.closed then error("store.pg: the pool is closed", 2) end
  while true do
    local c = table.remove(self.idle)
    while c and not usable(c) do
      c:close()
      self.open = self.open - 1
      c = table.remove(self.idle)
    end
    if c then return c end
    if self.open < self.size then
      self.open = self.open + 1
      -- closed while it connects: the count goes back
      local connecting = true
      local _ <close> = setmetatable({}, { __close = function()
        if connecting then
          self.open = self.open - 1
          wake_next(self)
        end
      end })
      local conn, err = pg.connect(self.conninfo, self.connect_opts)
      connecting = false
      if not conn then
        self.open = self.open - 1
        wake_next(self)             -- someone else may try (or fail) too
        return nil, "postgresql: " .. err
      end
      if self.closed then conn:close() error("store.pg: the pool is closed", 2) end
      return conn
    end
    -- wait for a release; closed or timed out meanwhile: leave the queue
    local w = { co = coroutine.running() }
    self.waiters[#self.waiters + 1] = w
    local timer = loop.timer(self.acquire_timeout, 0, function()
      if not w.done and not w.woken then
        w.timed_out = true
        loop.wake(w.co)
      end
    end)
    local _ <close> = setmetatable({}, { __close = function()
      timer:close()
      if not w.done then
        w.done = true
        -- woken, but gone before it ran: the next one may take the connection
        if w.woken and not w.ran then wake_next(self) end
      end
    end })
    loop.wait()
    w.ran = true
    w.done = true
    if w.timed_out then
      return nil, ("postgresql: no free connection within %g s (pool of %d)")
        :format(self.acquire_timeout, self.size)
    end
    if self.closed then error("store.pg: the pool is closed", 2) end
  end
end

-- Give a connection back; one lost or left in a transaction is closed.
function Pool:release(c)
  if self.closed or not usable(c) then
    c:close()
    self.open = self.open - 1
  else
    self.idle[#self.idle + 1] = c
  end
  wake_next(self)
end

-- A to-be-closed lease on c: gives c back when the scope ends (however it
-- ends: a return, an error, the coroutine closed), unless kept.
--
-- A coroutine closed while its statement runs leaves that connection closed
-- (core.pg cannot take the result back); the server would run the statement
-- to its end for nobody, so its session is terminated from another
-- connection.
local function abandoned(self, c, pid)
  if c:status() ~= "closed" or not pid or self.closed then return end
  loop.spawn(function() self:run("SELECT pg_terminate_backend(?)", pid) end)
end

local Lease = {}
Lease.__index = Lease
Lease.__close = function(l)
  if l.kept then return end
  abandoned(l.pool, l.conn, l.pid)
  l.pool:release(l.conn)
end
local function lease(self, c)
  return setmetatable({ pool = self, conn = c, pid = c:status() == "idle" and c:backend_pid() or nil }, Lease)
end

-- Run fn(conn, ...) on the coroutine's transaction connection, or on one
-- taken from the pool for the call (given back however fn ends).
local function with_conn(self, fn, ...)
  local tx = self.tx[coroutine.running()]
  if tx then return fn(tx.conn, ...) end
  local c, err = self:acquire()
  if not c then return nil, err end
  local _ <close> = lease(self, c)
  return fn(c, ...)
end

local function do_query(c, sql, ...)
  return c:query(M.translate(sql), ...)
end

function Pool:query(sql, ...)
  local rows, err = with_conn(self, do_query, sql, ...)
  if not rows then return nil, err end
  return rows
end
Pool.rows = Pool.query

function Pool:row(sql, ...)
  local rows, err = with_conn(self, do_query, sql, ...)
  if not rows then return nil, err end
  return rows[1]
end

function Pool:run(sql, ...)
  local rows, count = with_conn(self, do_query, sql, ...)
  if not rows then return nil, count end
  return count
end

local function do_insert(c, sql, ...)
  return c:query(returning_id(sql), ...)
end

function Pool:insert(sql, ...)
  local rows, err = with_conn(self, do_insert, sql, ...)
  if not rows then return nil, err end
  if not rows[1] or rows[1].id == nil then return nil, "no row was inserted" end
  return rows[1].id
end

local function do_exec(c, sql) return c:exec(sql) end

function Pool:exec(sql)
  return with_conn(self, do_exec, sql)
end

-- {======================================================
-- Transactions: one connection per coroutine from BEGIN to COMMIT.
-- =======================================================

function Pool:in_transaction()
  return self.tx[coroutine.running()] ~= nil
end

-- The transaction of a coroutine. A coroutine that ends (or is collected)
-- without its COMMIT or ROLLBACK would keep the connection, and the locks
-- its transaction holds, forever: once the coroutine is collected, so is
-- this, and its __gc closes the connection (the server rolls back).
Tx = {}
Tx.__gc = function(tx)
  if tx.done then return end
  tx.done = true
  tx.conn:close()
  tx.pool.open = tx.pool.open - 1
  wake_next(tx.pool)
end

function Pool:begin()
  local co = coroutine.running()
  if self.tx[co] then return nil, "a transaction is already open" end
  local c, err = self:acquire()
  if not c then return nil, err end
  local l <close> = lease(self, c)
  local ok, berr = c:exec("BEGIN")
  if not ok then return nil, berr end
  l.kept = true
  self.tx[co] = setmetatable({ pool = self, conn = c }, Tx)
  return true
end

local function finish(self, sql)
  local co = coroutine.running()
  local tx = self.tx[co]
  if not tx then return nil, "no transaction is open" end
  self.tx[co] = nil
  tx.done = true
  local c = tx.conn
  -- PostgreSQL answers a COMMIT of a transaction that an error aborted with
  -- a ROLLBACK, not an error: say so
  local aborted = sql == "COMMIT" and c:transaction_status() == "inerror"
  if aborted then sql = "ROLLBACK" end
  -- given back (closed when the COMMIT left it unusable) however it ends
  local _ <close> = lease(self, c)
  local ok, err = c:exec(sql)
  if ok and aborted then ok, err = nil, "the transaction was rolled back: a statement in it failed" end
  if not ok then return nil, err end
  return true
end

function Pool:commit() return finish(self, "COMMIT") end
function Pool:rollback() return finish(self, "ROLLBACK") end

-- Run fn(db) between BEGIN and COMMIT: fn returns true (commit) or nil, err
-- (roll back). Returns true or nil, err; an error in fn rolls back and is
-- raised again. If the coroutine is closed inside, the connection is closed
-- (the server rolls back).
function Pool:transaction(fn)
  if self:in_transaction() then
    return nil, "a transaction is already open: its writes would not be durable on their own"
  end
  local ok, err = self:begin()
  if not ok then return nil, err end
  local co = coroutine.running()
  local pid = self.tx[co].conn:backend_pid()
  local _ <close> = setmetatable({}, { __close = function()
    local tx = self.tx[co]
    if tx then                  -- still open: co was closed inside fn
      self.tx[co] = nil
      tx.done = true
      local c = tx.conn
      abandoned(self, c, pid)
      c:close()
      self.open = self.open - 1
      wake_next(self)
    end
  end })
  local pok, res, ferr = pcall(fn, self)
  if pok and res then
    ok, err = self:commit()
    if ok then return true end
  else
    err = pok and ferr or res
    if self.tx[co] then self:rollback() end
  end
  if not pok then error(res, 0) end
  return nil, err
end

-- }======================================================

-- {======================================================
-- LISTEN/NOTIFY
-- =======================================================

-- pool:notify(channel, payload): NOTIFY in the caller's transaction if one
-- is open (delivered at its COMMIT), else at once. true | nil, err.
function Pool:notify(channel, payload)
  local n, err = self:run("SELECT pg_notify(?, ?)", channel, payload or "")
  if not n then return nil, err end
  return true
end

-- pool:subscribe(channel, fn): fn(payload, pid) for each notification on
-- channel, in a coroutine of its own, over a connection of its own (not
-- one of the pool's). When that connection is lost it is opened again
-- (after 0.5 s, then up to 5 s apart) and fn(nil) is called once it
-- listens again: notifications may have been missed meanwhile, so a
-- subscriber that caches drops everything. Returns the subscription;
-- sub:close() ends it.
function Pool:subscribe(channel, fn)
  if type(channel) ~= "string" or channel == "" then
    error("store.pg: subscribe: expected a channel name", 2)
  end
  if type(fn) ~= "function" then error("store.pg: subscribe: expected a function", 2) end
  local sub = { channel = channel, fn = fn, closed = false, listening = false }
  function sub.close()
    sub.closed = true
    if sub.conn then sub.conn:close() end
  end
  self.subscriptions[#self.subscriptions + 1] = sub
  loop.spawn(function()
    local delay, first = 0.5, true
    while not sub.closed and not self.closed do
      local c, err = pg.connect(self.conninfo, self.connect_opts)
      if c then
        sub.conn = c
        local ok
        ok, err = c:listen(channel)
        if ok then
          sub.listening, delay = true, 0.5
          if not first then loop.spawn(fn, nil) end
          first = false
          while true do
            local ch, payload, pid = c:wait_notify()
            if not ch then err = payload break end
            if ch == channel then loop.spawn(fn, payload, pid) end
          end
        end
        sub.listening = false
        c:close()
        sub.conn = nil
      end
      sub.last_error = err
      if sub.closed or self.closed then break end
      loop.sleep(delay)
      delay = math.min(delay * 2, 5)
    end
  end)
  return sub
end

-- }======================================================

-- Close every idle connection and subscription; connections in use are
-- closed as they come back.
function Pool:close()
  if self.closed then return end
  self.closed = true
  for _, c in ipairs(self.idle) do c:close() end
  self.open = self.open - #self.idle
  self.idle = {}
  for _, s in ipairs(self.subscriptions) do s.close() end
  for _, w in ipairs(self.waiters) do
    if not w.done then w.woken = true loop.wake(w.co) end
  end
  self.waiters = {}
end

-- What the pool holds now (for tests and metrics).
function Pool:stats()
  return { open = self.open, idle = #self.idle, waiting = #self.waiters, size = self.size }
end

return M
