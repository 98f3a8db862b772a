-- tests/helpers.lua -- what many specs need: comparing numbers, expecting an
-- error, and small file chores.
--
--   local h = require "helpers"
--   h.near(got, expected, 1e-6, "loss")
--   h.fails_with("matmul: shapes", function() a:matmul(b) end)
local helpers = {}

--- Asserts |a - b| <= tol * max(1, |b|) (tol 1e-6 by default); the message
-- names `what` and both values.  Returns true.
function helpers.near(a, b, tol, what)
  tol = tol or 1e-6
  assert(math.abs(a - b) <= tol * math.max(1, math.abs(b)),
    string.format("%s: got %.9g, expected %.9g", what or "value", a, b))
  return true
end

--- Asserts that fn(...) raises an error whose message contains `expected`
-- (plain text, not a pattern); returns the message.
function helpers.fails_with(expected, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error containing: " .. expected)
  err = tostring(err)
  assert(err:find(expected, 1, true), "expected an error containing:\n  " .. expected .. "\ngot:\n  " .. err)
  return err
end

--- The bytes of a file, or nil when it cannot be opened.
function helpers.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- Writes bytes to a file (replacing it); returns the path.
function helpers.write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

--- Whether a file can be opened.
function helpers.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- A new empty folder under the system's temporary folder.
function helpers.tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "'"))
  return d
end

return helpers
