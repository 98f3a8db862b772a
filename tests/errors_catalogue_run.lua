-- tests/errors_catalogue_run.lua -- runs every entry of tests/errors_catalogue.lua
-- and prints one line per entry: "ok N" or "FAIL N: why", then "N passed, N failed".
--
--   lua5.4 tests/errors_catalogue_run.lua             check every message
--   lua5.4 tests/errors_catalogue_run.lua --record    print the messages (to write
--                                                      the catalogue's `error` fields)
--   lua5.4 tests/errors_catalogue_run.lua --markdown  print docs/errors.md
--
-- tests/errors_catalogue_spec.lua runs it in a process of its own under a time
-- limit, so an entry that crashes or hangs fails the test instead of the run.
package.path = "./lua/?.lua;./lua/?/init.lua;./tests/?.lua;" .. package.path

local mode = arg and arg[1] or "--check"
local catalogue = dofile("tests/errors_catalogue.lua")

-- Entries in order, numbered from 1.
local function entries()
  local list = {}
  for _, class in ipairs(catalogue) do
    for _, e in ipairs(class.entries) do
      list[#list + 1] = e
      e.class = class.title
      e.number = #list
    end
  end
  return list
end

----------------------------------------------------------------------------
-- docs/errors.md

local function markdown()
  local out = {
    "# Errors: what each kind of bad input gets",
    "",
    "<!-- Generated from tests/errors_catalogue.lua by `make errors-doc`; edit that file, not this one.",
    "     tests/errors_catalogue_spec.lua runs every example below and checks its message word for word. -->",
    "",
    "Every mistake below raises a Lua error with the message shown (after the usual",
    "`file:line:` of the calling code, where Lua adds one). None of them crashes the",
    "process, hangs, or leaves a partial or temporary file behind. In the examples,",
    "`DIR` is an empty folder, `write(name, bytes)` writes `DIR/name` and returns its",
    "path, and `header(json, n)` is a safetensors file with that header and `n` bytes",
    "of data.",
    "",
  }
  local n = 0
  for _, class in ipairs(catalogue) do
    out[#out + 1] = "## " .. class.title
    out[#out + 1] = ""
    if class.intro ~= "" then
      out[#out + 1] = class.intro
      out[#out + 1] = ""
    end
    for _, e in ipairs(class.entries) do
      n = n + 1
      out[#out + 1] = string.format("**%d. %s%s**", n, e.what:sub(1, 1):upper(), e.what:sub(2))
      out[#out + 1] = ""
      out[#out + 1] = "```lua"
      out[#out + 1] = e.code
      out[#out + 1] = "```"
      out[#out + 1] = ""
      out[#out + 1] = "```"
      out[#out + 1] = e.error or "(no message recorded)"
      out[#out + 1] = "```"
      out[#out + 1] = ""
    end
  end
  return table.concat(out, "\n")
end

if mode == "--markdown" then
  io.write(markdown())
  return
end

----------------------------------------------------------------------------
-- Running the entries

local la = require "lualign"
local recipe = require "lualign.recipe"
local sys = require "lualign.sys"

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local base = os.tmpname()
os.remove(base)
assert(sys.mkdir(base))

-- Files under dir, as paths relative to it (folders end in nothing special).
local function listing(dir)
  local p = assert(io.popen("cd " .. sh_quote(dir) .. " && find . -mindepth 1 | sort"))
  local files = {}
  for line in p:lines() do files[#files + 1] = line:sub(3) end
  p:close()
  return files
end

local function safetensors_header(json, nbytes)
  while (8 + #json) % 8 ~= 0 do json = json .. " " end
  return string.pack("<I8", #json) .. json .. string.rep("\0", nbytes or 0)
end

local function run_entry(e)
  local dir = base .. "/" .. e.number
  assert(sys.mkdir(dir))
  local written = {}
  local env = setmetatable({
    la = la, recipe = recipe, DIR = dir,
    header = safetensors_header,
    write = function(name, bytes)
      local path = dir .. "/" .. name
      local f = assert(io.open(path, "wb"))
      f:write(bytes)
      f:close()
      written[name] = true
      return path
    end,
  }, {__index = _G})
  local chunk, cerr = load(e.code, "=code", "t", env)
  if not chunk then return nil, "the example does not compile: " .. cerr end
  local t0 = la.clock()
  local ok, err = pcall(chunk)
  local elapsed = la.clock() - t0
  collectgarbage("collect")
  if ok then return nil, "no error was raised" end
  if type(err) ~= "string" then return nil, "the error is a " .. type(err) .. ", not a message" end
  -- The position Lua puts first: the example's line, or a recipe script's.
  local msg = err:gsub("^code:%d+: ", ""):gsub("^recipes/[%w_]+%.lua:%d+: ", ""):gsub(dir:gsub("%p", "%%%0"), "DIR")
  -- What is left in DIR: only what the example wrote, and what it may leave.
  local allowed = {}
  for name in pairs(written) do allowed[name] = true end
  for _, name in ipairs(e.leaves or {}) do allowed[name] = true end
  for _, f in ipairs(listing(dir)) do
    if not allowed[f] then return msg, "left a file behind: DIR/" .. f end
  end
  if elapsed > 60 then return msg, string.format("took %.0f s", elapsed) end
  return msg
end

local passed, failed = 0, 0
for _, e in ipairs(entries()) do
  local msg, problem = run_entry(e)
  if mode == "--record" then
    print(string.format("-- %d. %s\n%s%s", e.number, e.what, tostring(msg), problem and ("\n   !! " .. problem) or ""))
  else
    if not problem and msg ~= e.error then
      problem = string.format("message differs\n  got:      %s\n  expected: %s", tostring(msg), tostring(e.error))
    end
    if problem then
      failed = failed + 1
      print(string.format("FAIL %d: %s: %s", e.number, e.what, problem:gsub("\n", "\\n")))
    else
      passed = passed + 1
      print(string.format("ok %d: %s", e.number, e.what))
    end
  end
  io.stdout:flush()
end
os.execute("rm -rf " .. sh_quote(base))
if mode ~= "--record" then
  print(string.format("%d passed, %d failed", passed, failed))
  os.exit(failed == 0 and 0 or 1, true)
end
