--- The `lualign` command: run a script or a recipe with its arguments,
-- evaluate code, or start the interactive prompt.

local M = {}

local usage = [==[
usage: lualign [options] [script.lua | recipe] [args...]

  lualign                    interactive prompt with la, nn, optim, loss loaded
  lualign script.lua a b     run a script; its arguments are in `arg`
  lualign gdpo beta=0.2      run a recipe by name: recipes/gdpo.lua in a checkout,
                             else the installed lualign/recipes/gdpo.lua
  lualign --recipe NAME ...  the same, even when a file NAME exists here
  lualign --recipes          list the recipes found, with their paths
  lualign -e 'code'          run code (may repeat; runs before the script)
  lualign -i script.lua      run the script, then stay at the prompt
  lualign -v, --version      print the version
  lualign -h, --help         print this help
]==]

-- The job this process belongs to, once joined, when it has several
-- processes: {rank = r, size = n}.
local job = nil

-- In a job of several processes, a message names the rank it comes from.  It
-- is written in one piece: stderr is unbuffered, and the launcher's own
-- messages (its abort banner) could otherwise land between the parts.
local function report(err)
  local where = job and string.format("rank %d of %d: ", job.rank, job.size) or ""
  io.stderr:write("lualign: " .. where .. tostring(err) .. "\n")
  return 1
end

-- An error raised without a position (error(msg, 0): a bad config key, a run
-- stopped on purpose) is a message for the user and is shown alone; any other
-- error, from the engine or from a script, comes with its traceback.
local function message_handler(e)
  if type(e) == "string" and not e:match("^[^\n]-:%d+: ") then return e end
  return debug.traceback(tostring(e), 2)
end

-- Runs a chunk, reporting an error; returns ok.  In a job of several
-- processes an error on one rank ends them all (la.dist.abort): the others
-- would otherwise wait for it forever in their next collective.
local function run_chunk(chunk, ...)
  local ok, err = xpcall(chunk, message_handler, ...)
  if not ok then
    report(err)
    if job then
      io.stderr:flush()
      require("lualign.dist").abort(1)
    end
  end
  return ok
end

-- Started by an MPI launcher: joins the job's world before the script runs,
-- and lets only rank 0 print (the others' output would repeat it N times;
-- their errors still reach stderr).  Returns nil, or the error.
local function join_world()
  local dist = require "lualign.dist"
  if not dist.launched() then return nil end
  local ok, rank, size = pcall(dist.init)
  if not ok then return rank end
  if size > 1 then job = {rank = rank, size = size} end
  if rank ~= 0 then
    _G.print = function() end
    io.output("/dev/null")
  end
  return nil
end

----------------------------------------------------------------------------
-- Recipes

local function file_exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

--- The folders recipes are looked up in, in order: `extra` (a checkout's
-- recipes/, given by bin/lualign), then lualign/recipes/ in each folder
-- of package.path that is not relative to the current one.
function M.recipe_dirs(extra)
  local dirs, seen = {}, {}
  local function add(dir)
    if not seen[dir] then
      seen[dir] = true
      dirs[#dirs + 1] = dir
    end
  end
  for _, dir in ipairs(extra or {}) do add(dir) end
  for template in package.path:gmatch("[^;]+") do
    local base = template:match("^(.*)%?%.lua$")
    if base and not base:match("^%.") then add(base .. "lualign/recipes") end
  end
  return dirs
end

--- The recipe name a script argument stands for ("bandit", "bandit.lua",
-- "recipes/bandit.lua" -> "bandit"), or nil when it is a path of another kind.
function M.recipe_name(arg)
  return arg:match("^([%w_%-]+)$") or arg:match("^([%w_%-]+)%.lua$") or
         arg:match("^recipes/([%w_%-]+)%.lua$")
end

--- The path of the recipe called name, or nil.
function M.find_recipe(name, extra_dirs)
  for _, dir in ipairs(M.recipe_dirs(extra_dirs)) do
    local path = dir .. "/" .. name .. ".lua"
    if file_exists(path) then return path end
  end
  return nil
end

--- The recipes found: a sorted list of {name, path}, the first of each name.
function M.list_recipes(extra_dirs)
  local found, list = {}, {}
  for _, dir in ipairs(M.recipe_dirs(extra_dirs)) do
    local p = io.popen("ls -1 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
    if p then
      for file in p:lines() do
        local name = file:match("^([%w_%-]+)%.lua$")
        if name and not found[name] then
          found[name] = true
          list[#list + 1] = {name, dir .. "/" .. file}
        end
      end
      p:close()
    end
  end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  return list
end

-- The file a script argument names: itself when it exists, else a recipe.
local function script_path(arg, force_recipe, extra_dirs)
  if arg == "-" then return "-" end
  if not force_recipe and file_exists(arg) then return arg end
  local name = M.recipe_name(arg)
  local path = name and M.find_recipe(name, extra_dirs)
  if path then return path end
  if force_recipe or name then
    return nil, string.format("no file %s and no recipe called %s (lualign --recipes lists them)", arg, name or arg)
  end
  return nil, "cannot open " .. arg
end

local function print_recipes(extra_dirs)
  local list = M.list_recipes(extra_dirs)
  if #list == 0 then io.write("no recipes found in:\n  ", table.concat(M.recipe_dirs(extra_dirs), "\n  "), "\n") end
  for _, r in ipairs(list) do io.write(string.format("%-12s %s\n", r[1], r[2])) end
  return 0
end

--- Entry point; argv is the global `arg`, opts.recipe_dirs the folders
-- searched for recipes before the installed ones.  Returns the exit status.
function M.main(argv, opts)
  argv, opts = argv or {}, opts or {}
  local la = require "lualign"
  _G.la = la
  local exprs, interactive, script_at, force_recipe = {}, false, nil, false
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-h" or a == "--help" then
      io.write(usage)
      return 0
    elseif a == "-v" or a == "--version" then
      io.write("lualign ", la.version, " (", _VERSION, ")\n")
      return 0
    elseif a == "--recipes" then
      return print_recipes(opts.recipe_dirs)
    elseif a == "-e" then
      if not argv[i + 1] then return report("-e needs an argument") end
      exprs[#exprs + 1] = argv[i + 1]
      i = i + 1
    elseif a == "-i" then
      interactive = true
    elseif a == "--recipe" then
      if not argv[i + 1] then return report("--recipe needs a name") end
      force_recipe, script_at = true, i + 1
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      io.stderr:write(usage)
      return report("unknown option " .. a)
    else
      script_at = i
      break
    end
    i = i + 1
  end

  local repl = require "lualign.repl"
  if #exprs > 0 or interactive or not script_at then repl.preload() end
  local join_err = join_world()
  if join_err then return report(join_err) end

  for _, code in ipairs(exprs) do
    local chunk, err = load(code, "=(command line)")
    if not chunk then return report(err) end
    if not run_chunk(chunk) then return 1 end
  end

  if script_at then
    local path, err = script_path(argv[script_at], force_recipe, opts.recipe_dirs)
    if not path then return report(err) end
    -- The script sees its own name as arg[0] and its arguments as arg[1..].
    local script_arg = {[0] = path}
    for k = script_at + 1, #argv do script_arg[#script_arg + 1] = argv[k] end
    for k = -1, script_at - 1 do script_arg[k - script_at] = argv[k] end
    _G.arg = script_arg
    local chunk
    chunk, err = loadfile(path ~= "-" and path or nil)
    if not chunk then return report(err) end
    if not run_chunk(chunk, table.unpack(script_arg)) then return 1 end
    require("lualign.dist").finalize()
  end

  if interactive or (not script_at and #exprs == 0) then
    return repl.run()
  end
  return 0
end

return M
