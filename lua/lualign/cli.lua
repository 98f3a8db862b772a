--- The `lualign` command: run a script with its arguments, evaluate code, or
-- start the interactive prompt.

local M = {}

local usage = [==[
usage: lualign [options] [script.lua [args...]]

  lualign                    interactive prompt with `la = require "lualign"` loaded
  lualign script.lua a b     run a script (a recipe, say); its arguments are in `arg`
  lualign -e 'code'          run code (may repeat; runs before the script)
  lualign -i script.lua      run the script, then stay at the prompt
  lualign -v, --version      print the version
  lualign -h, --help         print this help
]==]

local function report(err)
  io.stderr:write("lualign: ", tostring(err), "\n")
  return 1
end

-- Runs a chunk with a traceback on error; returns ok.
local function run_chunk(chunk, ...)
  local ok, err = xpcall(chunk, function(e) return debug.traceback(tostring(e), 2) end, ...)
  if not ok then report(err) end
  return ok
end

--- Entry point; argv is the global `arg`.  Returns the exit status.
function M.main(argv)
  argv = argv or {}
  local la = require "lualign"
  _G.la = la
  local exprs, interactive, script_at = {}, false, nil
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-h" or a == "--help" then
      io.write(usage)
      return 0
    elseif a == "-v" or a == "--version" then
      io.write("lualign ", la.version, " (", _VERSION, ")\n")
      return 0
    elseif a == "-e" then
      if not argv[i + 1] then return report("-e needs an argument") end
      exprs[#exprs + 1] = argv[i + 1]
      i = i + 1
    elseif a == "-i" then
      interactive = true
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      io.stderr:write(usage)
      return report("unknown option " .. a)
    else
      script_at = i
      break
    end
    i = i + 1
  end

  for _, code in ipairs(exprs) do
    local chunk, err = load(code, "=(command line)")
    if not chunk then return report(err) end
    if not run_chunk(chunk) then return 1 end
  end

  if script_at then
    local path = argv[script_at]
    -- The script sees its own name as arg[0] and its arguments as arg[1..].
    local script_arg = {[0] = path}
    for k = script_at + 1, #argv do script_arg[#script_arg + 1] = argv[k] end
    for k = -1, script_at - 1 do script_arg[k - script_at] = argv[k] end
    _G.arg = script_arg
    local chunk, err = loadfile(path ~= "-" and path or nil)
    if not chunk then return report(err) end
    if not run_chunk(chunk, table.unpack(script_arg)) then return 1 end
  end

  if interactive or (not script_at and #exprs == 0) then
    return require("lualign.repl").run()
  end
  return 0
end

return M
