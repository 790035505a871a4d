-- A real filesystem that fills up, for storage-fault tests: a small tmpfs
-- mounted on a directory (we run as root), a filler file that takes every
-- free block, and the unmount for teardown. No mocks: SQLite meets ENOSPC.
local H = require("helpers")

local F = {}

-- Mount a tmpfs of `size` (e.g. "8m") on dir (created). Returns a handle:
-- fill() takes every free block, free() gives them back, umount().
function F.mount(dir, size)
  os.execute("mkdir -p " .. H.q(dir))
  local out, code = H.sh(("mount -t tmpfs -o size=%s,mode=0700 tmpfs %s 2>&1"):format(size or "8m", H.q(dir)))
  assert(code == 0, "mount tmpfs on " .. dir .. " (the storage tests need root): " .. out)
  local self = { dir = dir, filler = dir .. "/.filler" }
  function self.fill()
    -- dd stops at ENOSPC (exit status 1): the disk is then full
    H.sh(("dd if=/dev/zero of=%s bs=4096 2>/dev/null; sync"):format(H.q(self.filler)))
    local avail = H.sh(("df --output=avail -B1 %s | tail -1"):format(H.q(dir)))
    assert(tonumber(avail) == 0, "the tmpfs is not full: " .. avail)
  end
  function self.free() os.remove(self.filler) end
  function self.umount()
    H.sh(("umount -l %s 2>&1"):format(H.q(dir)))
  end
  return self
end

return F
