--- help(x): the documentation of a lualign function, class or module.
--
--     help(la.zeros)            help(la.nn.Linear)        help("la.optim.AdamW")
--     help(t.matmul)            help("t:softmax")         help(la.nn)
--
-- Functions written in Lua are documented by the `---` comment block just
-- above their definition, read at run time from the installed sources (found
-- with package.searchpath).  A block above a group of one-line definitions
-- (no blank line between them) documents each of them; a block above a
-- module's first line documents the module.  Functions written in C (the
-- tensor methods and constructors) are documented in docs/*.md: help shows
-- the table rows, list items and paragraphs of those pages whose code spans
-- name the function.  The pages are installed next to the Lua modules (in
-- lualign/docs/) or found in a checkout's docs/ folder.

local core = require "lualign.core"

local M = {}

----------------------------------------------------------------------------
-- Reading source files

local line_cache = {}

-- The lines of a file, or nil when it cannot be read.
local function file_lines(path)
  if line_cache[path] ~= nil then return line_cache[path] or nil end
  local f = io.open(path, "r")
  if not f then
    line_cache[path] = false
    return nil
  end
  local lines = {}
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  line_cache[path] = lines
  return lines
end

local function is_comment(line) return line:match("^%s*%-%-") ~= nil end
local function is_separator(line) return line:match("^%s*%-%-%-%-") ~= nil end
local function opens_doc(line) return line:match("^%s*%-%-%-") ~= nil and not is_separator(line) end

-- A one-line definition, as in a group `F.relu = function(x) return x:relu() end`.
local function is_one_line_definition(line)
  if line:match("^%s*$") or is_comment(line) then return false end
  if line:match("^%s*local%s+function%s") or line:match("^%s*function%s") then
    return line:match("%send%s*$") ~= nil
  end
  return line:match("^%s*[%w_.]+%s*=") ~= nil and
         (not line:find("function", 1, true) or line:match("%send%s*$") ~= nil)
end

-- Strips the comment marks, keeping the indentation of code examples.
local function comment_text(line)
  return (line:gsub("^%s*%-%-%-?", ""):gsub("^ ", ""))
end

--- The `---` block that documents line n of lines (skipping up over a group
-- of one-line definitions), as text; nil when there is none.
function M.doc_above(lines, n)
  local i = n - 1
  while i >= 1 and is_one_line_definition(lines[i]) do i = i - 1 end
  local last = i
  while i >= 1 and is_comment(lines[i]) and not is_separator(lines[i]) do i = i - 1 end
  local first = i + 1
  if first > last or not opens_doc(lines[first]) then return nil end
  local text = {}
  for k = first, last do text[#text + 1] = comment_text(lines[k]) end
  return table.concat(text, "\n")
end

--- The `---` block at the top of a file (a module's own documentation).
function M.doc_of_file(lines)
  local n = 1
  while lines[n] and (lines[n]:match("^#!") or lines[n]:match("^%s*$")) do n = n + 1 end
  if not lines[n] or not opens_doc(lines[n]) then return nil end
  local last = n
  while lines[last + 1] and is_comment(lines[last + 1]) and not is_separator(lines[last + 1]) do
    last = last + 1
  end
  local text = {}
  for k = n, last do text[#text + 1] = comment_text(lines[k]) end
  return table.concat(text, "\n")
end

local function escape(s) return (s:gsub("%p", "%%%0")) end

-- The lines where `name` is defined: function X.name( / X:name( / local
-- name = / X.name = / name = / {..., name = ...}.
local function definition_patterns(name)
  local n = escape(name)
  return {
    "^%s*function%s+[%w_.:]*[.:]" .. n .. "%s*%(",
    "^%s*function%s+" .. n .. "%s*%(",
    "^%s*local%s+function%s+" .. n .. "%s*%(",
    "^%s*local%s+" .. n .. "%s*=",
    "^%s*[%w_.]*%." .. n .. "%s*=",
    "^%s*" .. n .. "%s*=",
    "[{,]%s*" .. n .. "%s*=",
  }
end

--- The docstring of the first definition of `name` in a file that has one.
function M.doc_by_name(lines, name)
  local patterns = definition_patterns(name)
  for n, line in ipairs(lines) do
    for _, p in ipairs(patterns) do
      if line:match(p) then
        local doc = M.doc_above(lines, n)
        if doc then return doc, n end
        break
      end
    end
  end
  return nil
end

----------------------------------------------------------------------------
-- Where things are

local function module_file(modname)
  return package.searchpath(modname, package.path)
end

-- The source file of a Lua function and its first line, or nil (for a
-- function wrapped so its errors point at the caller, the wrapped one's).
local function function_source(fn)
  local info = debug.getinfo(require("lualign.util").unwrap(fn), "S")
  if info.what ~= "Lua" or info.source:sub(1, 1) ~= "@" then return nil end
  return info.source:sub(2), info.linedefined
end

-- The loaded lualign modules (tables), sorted by name.
local function loaded_modules()
  local list = {}
  for name, mod in pairs(package.loaded) do
    if (name == "lualign" or name:match("^lualign%.")) and name ~= "lualign.core" and type(mod) == "table" then
      list[#list + 1] = name
    end
  end
  table.sort(list)
  return list
end

--- The display name of a module: la, la.nn, la.nn.functional, ...
function M.display_module(modname)
  return "la" .. modname:sub(#"lualign" + 1)
end

-- Every place the value is found, one level into each loaded module and
-- one more into the tables it holds that are not modules themselves
-- (classes, namespaces, la.Tensor): {module = "lualign.nn", keys =
-- {"Linear"}} entries, shortest first.
local function find_names(value)
  local modules, is_module = loaded_modules(), {}
  for _, modname in ipairs(modules) do is_module[package.loaded[modname]] = true end
  local found = {}
  local function add(modname, keys) found[#found + 1] = {module = modname, keys = keys} end
  for _, modname in ipairs(modules) do
    local mod = package.loaded[modname]
    if mod == value then add(modname, {}) end
    for k, v in next, mod do
      if type(k) == "string" then
        if v == value and not is_module[v] then add(modname, {k}) end
        if type(v) == "table" and not is_module[v] then
          for k2, v2 in next, v do
            if v2 == value and type(k2) == "string" then add(modname, {k, k2}) end
          end
        end
      end
    end
  end
  table.sort(found, function(a, b)
    if #a.keys ~= #b.keys then return #a.keys < #b.keys end
    if a.module ~= b.module then return a.module < b.module end
    return table.concat(a.keys, ".") < table.concat(b.keys, ".")
  end)
  return found
end

local function qualified(place)
  local parts = {M.display_module(place.module)}
  for _, k in ipairs(place.keys) do parts[#parts + 1] = k end
  return table.concat(parts, ".")
end

----------------------------------------------------------------------------
-- Pages in docs/ (the functions written in C)

-- The folder of the installed pages, or of a checkout's docs/.
local function docs_dir()
  local init = module_file("lualign")
  if not init then return nil end
  local base = init:match("^(.*)/[^/]*$") or "."
  for _, dir in ipairs({base .. "/docs", base .. "/../../docs"}) do
    local f = io.open(dir .. "/tensors.md", "r")
    if f then
      f:close()
      return dir
    end
  end
  return nil
end

local function markdown_files(dir)
  local files = {}
  local p = io.popen("ls -1 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
  if p then
    for name in p:lines() do
      if name:match("%.md$") then files[#files + 1] = name end
    end
    p:close()
  end
  if #files == 0 then files[1] = "tensors.md" end
  table.sort(files)
  return files
end

-- The names a code span documents: `la.zeros(d1, …)` -> zeros,
-- `t:view(…)` -> view, `t.grad` -> grad, `exp` -> exp.
local function span_name(span)
  span = span:gsub("^local%s+[%w_]+%s*<close>%s*=%s*", "")
  span = span:gsub("^la%.", ""):gsub("^[%a_][%w_]*:", ""):gsub("^t%.", ""):gsub("^nn%.", "")
  return span:match("^[%a_][%w_]*")
end

-- Splits a page into entries (table rows, list items with their
-- continuation lines, paragraphs), each with its section heading; what
-- comes before the first `##` heading is left out.
local function page_entries(lines)
  local entries, section, current = {}, nil, nil
  local function close() current = nil end
  for _, line in ipairs(lines) do
    if line:match("^##+%s") then
      close()
      section = line:gsub("^#+%s*", "")
    elseif not section then
      -- the page's title and introduction document nothing in particular
    elseif line:match("^%s*$") or line:match("^```") then
      close()
    elseif line:match("^|") then
      close()
      if not line:match("^|%s*%-%-%-") then entries[#entries + 1] = {section = section, lines = {line}} end
    elseif line:match("^%s*[-*]%s") or not current then
      current = {section = section, lines = {line}}
      entries[#entries + 1] = current
    else
      current.lines[#current.lines + 1] = line
    end
  end
  return entries
end

-- A table row as "call -- text"; other entries as they are.
local function entry_text(entry)
  local first = entry.lines[1]
  if first:match("^|") then
    local cells = {}
    for cell in first:gsub("\\|", "\0"):gmatch("|([^|]*)") do
      cell = cell:gsub("^%s+", ""):gsub("%s+$", ""):gsub("%z", "|")
      if cell ~= "" then cells[#cells + 1] = cell end
    end
    return table.concat(cells, "  --  ")
  end
  return table.concat(entry.lines, "\n")
end

local page_index   -- name -> list of {page, section, text}, built once

local function build_page_index()
  page_index = {}
  local dir = docs_dir()
  if not dir then return end
  for _, file in ipairs(markdown_files(dir)) do
    for _, entry in ipairs(page_entries(file_lines(dir .. "/" .. file) or {})) do
      local text = table.concat(entry.lines, " ")
      local seen = {}
      for span in text:gmatch("`([^`]+)`") do
        local name = span_name(span)
        if name and not seen[name] then
          seen[name] = true
          page_index[name] = page_index[name] or {}
          table.insert(page_index[name], {page = "docs/" .. file, section = entry.section, text = entry_text(entry)})
        end
      end
    end
  end
end

-- The page that documents each module's functions written in C; a value is
-- looked up only on its module's page, so `exp` in a formula of another page
-- or `la.cat` in an example on the data page is not taken for its entry.
local MODULE_PAGES = {
  ["lualign"] = "tensors.md", ["lualign.nn"] = "nn.md", ["lualign.nn.functional"] = "nn.md",
  ["lualign.loss"] = "losses.md", ["lualign.optim"] = "optim.md", ["lualign.models"] = "models.md",
  ["lualign.models.gpt"] = "models.md", ["lualign.data"] = "data.md", ["lualign.tokenizer"] = "tokenizer.md",
  ["lualign.checkpoint"] = "checkpoint.md", ["lualign.recipe"] = "recipes.md",
}

--- The entries of docs/*.md that document `name`, as one text, or nil; with
-- `page` ("tensors.md"), only that page's entries.
function M.doc_from_pages(name, page)
  if not page_index then build_page_index() end
  local parts = {}
  for _, e in ipairs(page_index[name] or {}) do
    if not page or e.page == "docs/" .. page then
      parts[#parts + 1] = string.format("%s\n    (%s, %s)", e.text:gsub("`", ""), e.page, e.section)
    end
  end
  return #parts > 0 and table.concat(parts, "\n") or nil
end

----------------------------------------------------------------------------
-- Documentation of a value

-- The first line of a Lua function's definition, as its signature.
local function lua_signature(fn)
  local file, line = function_source(fn)
  local lines = file and file_lines(file)
  if not lines or not lines[line] then return nil end
  local sig = lines[line]:match("function%s*[%w_.:]*%s*%b()")
  return sig, file .. ":" .. line
end

local function doc_of_lua_function(fn)
  local file, line = function_source(fn)
  local lines = file and file_lines(file)
  if not lines then return nil end
  return M.doc_above(lines, line)
end

-- The docstring found by name in the module's source (for tables, and
-- for C functions given a name in a Lua file).
local function doc_by_place(place)
  local file = module_file(place.module)
  local lines = file and file_lines(file)
  if not lines then return nil end
  if #place.keys == 0 then return M.doc_of_file(lines) end
  return (M.doc_by_name(lines, place.keys[#place.keys]))
end

local function method_list(class)
  local names = {}
  for k, v in pairs(class) do
    if type(k) == "string" and type(v) == "function" and not k:match("^_") then names[#names + 1] = k end
  end
  table.sort(names)
  return names
end

-- The summary lines of a table: a module's functions and tables, or a
-- class's constructor and methods.
local function table_summary(t, name)
  local out = {}
  local init = rawget(t, "init")
  if type(init) == "function" then
    local sig = lua_signature(init)
    local args = sig and sig:match("%b()")
    if args then out[#out + 1] = "constructor: " .. (name:match("[%w_]+$") or "") .. args end
  end
  local methods = method_list(t)
  if #methods > 0 then out[#out + 1] = "functions: " .. table.concat(methods, ", ") end
  local tables = {}
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) == "table" and not k:match("^_") then tables[#tables + 1] = k end
  end
  table.sort(tables)
  if #tables > 0 then out[#out + 1] = "tables: " .. table.concat(tables, ", ") end
  return out
end

local function first_doc(value, places)
  if type(value) == "function" then
    local doc = doc_of_lua_function(value)
    if doc then return doc end
  end
  for _, place in ipairs(places) do
    local doc = doc_by_place(place)
    if doc then return doc end
  end
  if type(value) == "function" then
    for _, place in ipairs(places) do
      local page = MODULE_PAGES[place.module]
      local doc = page and M.doc_from_pages(place.keys[#place.keys] or "", page)
      if doc then return doc end
    end
  end
  return nil
end

--- The documentation of a value as text, and whether any was found.
function M.describe(value, name)
  if core.is_tensor(value) then
    return string.format("a tensor %s %s; its methods are documented by help(\"Tensor.NAME\"), e.g. help(\"t:matmul\")",
      value:shape_str(), value:dtype()), true
  end
  local places = find_names(value)
  if #places == 0 and type(value) == "table" and type(getmetatable(value)) == "table" then
    -- An object: document its class.
    local class = getmetatable(value)
    if #find_names(class) > 0 then return M.describe(class, name) end
  end
  local title = name or (places[1] and qualified(places[1])) or tostring(value)
  local header = title
  if type(value) == "function" then
    local sig, where = lua_signature(value)
    if sig then header = header .. (sig:match("%b()") or "") .. "    -- " .. where end
  end
  local doc = first_doc(value, places)
  local out = {header}
  if doc then out[#out + 1] = "  " .. doc:gsub("\n", "\n  ") end
  if type(value) == "table" then
    for _, line in ipairs(table_summary(value, title)) do out[#out + 1] = "  " .. line end
  end
  if not doc then out[#out + 1] = "  (no documentation found)" end
  return table.concat(out, "\n"), doc ~= nil
end

----------------------------------------------------------------------------
-- Names given as strings

-- "t:softmax", "Tensor.sum", "la.Tensor.sum" -> la.Tensor.sum
local function tensor_method(name)
  local method = name:match("^t:([%w_]+)$") or name:match("^Tensor[.:]([%w_]+)$") or
                 name:match("^la%.Tensor[.:]([%w_]+)$")
  return method and core.Tensor[method]
end

--- Resolves a name to a value: "la.optim.AdamW" and "lualign.optim.AdamW"
-- from la; "print" or "x.y" from the globals; else relative to la
-- ("zeros", "nn.Linear").  Returns nil when nothing has that name.
function M.resolve(name)
  local method = tensor_method(name)
  if method then return method end
  local la = require "lualign"
  local parts = {}
  for part in name:gsub("^lualign", "la"):gmatch("[^.:]+") do parts[#parts + 1] = part end
  if #parts == 0 then return nil end
  local v
  if parts[1] == "la" then
    v = la
  elseif rawget(_G, parts[1]) ~= nil then
    v = _G[parts[1]]
  else
    v = la[parts[1]]
  end
  for i = 2, #parts do
    if v == nil then return nil end
    local ok, next_v = pcall(function() return v[parts[i]] end)
    v = ok and next_v or nil
  end
  return v
end

--- The help text for x (a value or a name), and whether any was found.
function M.text(x)
  if x == nil then return M.intro(), true end
  if type(x) == "string" then
    local v = M.resolve(x)
    if v == nil then
      local doc = M.doc_from_pages(x:match("[%w_]+$") or x)
      if doc then return x .. "\n  " .. doc:gsub("\n", "\n  "), true end
      return "help: nothing is called " .. x, false
    end
    return M.describe(v, x)
  end
  return M.describe(x)
end

--- A short guide, shown by help() with no argument.
function M.intro()
  return [[
lualign REPL: la = require "lualign"; nn, optim and loss are la.nn, la.optim, la.loss.
  help(x)            documentation of a function, class or module: help(la.zeros),
                     help(la.nn.Linear), help("la.optim.AdamW"), help("t:softmax")
  expression         its value is printed: tensors readably, tables as listings
  Tab                completes globals, fields (la.nn.Li) and methods (t:res)
  Up / Down          history (kept in ~/.lualign_history or $LUALIGN_HISTORY)
  Ctrl-C             interrupts a running computation; at the prompt clears the line
  Ctrl-D             exits
Each input line is a chunk of its own: `local x = 1` is gone on the next line,
so assign globals (x = 1) to keep values.]]
end

--- Prints the help for x (see the module's documentation).  help() prints
-- the guide; help(nil) -- as from help(la.no_such_name) -- says the value
-- was nil rather than printing the guide.
function M.help(...)
  if select("#", ...) > 0 and (...) == nil then
    io.write("help: the value given is nil (a name that does not exist?); help(\"la.NAME\") looks a name up\n")
    return
  end
  io.write(M.text((...)), "\n")
end

return M
