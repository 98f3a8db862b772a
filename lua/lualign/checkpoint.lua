--- lualign.checkpoint: tensors to and from safetensors files.
--
--     local ckpt = require "lualign.checkpoint"     -- or la.checkpoint
--     ckpt.save("step100.safetensors", {["wte.weight"] = w, step = la.tensor(100)}, {epoch = 3})
--     local tensors, metadata = ckpt.load("step100.safetensors")
--     local h = ckpt.header("model.safetensors")    -- names, dtypes, shapes; no data read
--
-- The format is Hugging Face's safetensors, so files written here open with
-- `safetensors.safe_open` and Hugging Face checkpoints load here (F16, BF16
-- and F64 tensors become float32).  The work is done in C
-- (engine/formats/la_safetensors.c); this module checks arguments and reports errors
-- at the caller's line.  docs/checkpoint.md describes the format rules.

local core = require "lualign.core"

local st = core._safetensors
local M = {}

-- An error at the line that called M.<fn> (level: how far up that is).
local function fail(fn, msg, level)
  error("checkpoint." .. fn .. ": " .. msg, level or 3)
end

-- Calls into C; an error there becomes an error at the caller's line.
local function call(fn, cfn, ...)
  local ok, a, b = pcall(cfn, ...)
  if not ok then error("checkpoint." .. fn .. ": " .. tostring(a), 3) end
  return a, b
end

local function check_path(fn, path)
  if type(path) ~= "string" then
    fail(fn, "the path must be a string (got a " .. type(path) .. ")", 4)
  end
  if path == "" then fail(fn, "the path is empty", 4) end
end

--- Writes tensors and metadata to a safetensors file, atomically.
--
-- `named_tensors` maps names (strings) to tensors of any dtype lualign has
-- (float32 as F32, bfloat16 as BF16, float16 as F16, int32 as I32, int64 as
-- I64, bool as BOOL); views and other
-- non-contiguous tensors are written as their values, row-major.  `metadata`
-- (optional) maps strings to strings; numbers and booleans are written with
-- tostring, anything else is an error.  The file is written beside `path`
-- under a hidden temporary name, flushed to disk and renamed over `path`, so
-- `path` holds either its old contents or the complete new file, never a
-- part; on any error the old file is left as it was and the temporary one
-- removed.  Header keys are sorted, so the same tensors give the same bytes.
-- `opts.dtype` stores every float tensor as one type: "bf16" (bfloat16) or
-- "f16" (IEEE half), rounded to nearest even, or "f32"; without it each
-- keeps its own dtype.  Integer and bool tensors are unaffected.
function M.save(path, named_tensors, metadata, opts)
  check_path("save", path)
  local float_type = M.float_type("checkpoint.save", opts)
  if opts == nil or opts.dtype == nil then float_type = nil end
  if type(named_tensors) ~= "table" or core.is_tensor(named_tensors) then
    fail("save", "expected a table of name = tensor (got a " .. type(named_tensors) .. ")")
  end
  for name, t in pairs(named_tensors) do
    if type(name) ~= "string" then
      fail("save", "tensor names must be strings (found the " .. type(name) .. " key " .. tostring(name) .. ")")
    end
    if not core.is_tensor(t) then
      local what = getmetatable(t) == core.metatable and "closed tensor" or type(t)
      fail("save", "the value for '" .. name .. "' is a " .. what .. ", not a tensor")
    end
  end
  local meta = {}
  if metadata ~= nil then
    if type(metadata) ~= "table" then
      fail("save", "metadata must be a table of strings (got a " .. type(metadata) .. ")")
    end
    for k, v in pairs(metadata) do
      if type(k) ~= "string" then
        fail("save", "metadata keys must be strings (found the " .. type(k) .. " key " .. tostring(k) .. ")")
      end
      local tv = type(v)
      if tv == "string" then meta[k] = v
      elseif tv == "number" or tv == "boolean" then meta[k] = tostring(v)
      else
        fail("save", "metadata value for '" .. k .. "' is a " .. tv ..
          "; values must be strings (numbers and booleans are converted)")
      end
    end
  end
  call("save", st.write, path, named_tensors, meta, float_type)
end

local float_types = {f32 = "F32", float32 = "F32", bf16 = "BF16", bfloat16 = "BF16",
                     f16 = "F16", float16 = "F16"}

--- The safetensors type ("F32", "BF16" or "F16") that `opts.dtype` names
-- for float32 tensors; errors start with `where` and list the accepted spellings.
function M.float_type(where, opts)
  local util = require "lualign.util"
  opts = util.check_options(where, opts, {"dtype"})
  if opts.dtype == nil then return "F32" end
  local t = float_types[opts.dtype]
  if not t then
    util.error(string.format("%s: dtype '%s' is not one lualign writes (f32, bf16, f16)", where, tostring(opts.dtype)))
  end
  return t
end

local load_options = {names = true}

--- Reads a safetensors file: returns `tensors, metadata`.
--
-- `tensors` maps each name to a new tensor (F32, F16, BF16 and F64 give
-- float32; I32 int32; I64 int64; BOOL bool); `metadata` is the file's
-- `__metadata__` table of strings, empty when it has none.  Each tensor is
-- read straight into its own memory, so loading needs no second copy of the
-- file.  `opts.names` (a list of names) loads only those tensors; asking for
-- a name the file lacks is an error.  The whole header is validated before
-- any tensor is read; every error names the file and, where one is involved,
-- the tensor.
function M.load(path, opts)
  check_path("load", path)
  local names
  if opts ~= nil then
    if type(opts) ~= "table" then fail("load", "opts must be a table (got a " .. type(opts) .. ")") end
    for k in pairs(opts) do
      if not load_options[k] then fail("load", "unknown option '" .. tostring(k) .. "' (known: names)") end
    end
    names = opts.names
    if names ~= nil and type(names) ~= "table" then
      fail("load", "opts.names must be a list of tensor names (got a " .. type(names) .. ")")
    end
  end
  local tensors, metadata = call("load", st.read, path, names)   -- no tail call: keeps the
  return tensors, metadata                                        -- caller's level for errors
end

--- Reads tensors of a safetensors file into existing tensors: `into` maps
-- names in the file to tensors of the same shape (a model's parameters, or
-- views of them).  A contiguous float32 destination receives the data
-- directly (F16, BF16 and F64 converted on the way), so loading a model this
-- way never holds a second copy of its weights.  Runs without recording
-- gradients; errors name the file and the tensor.
function M.read_into(path, into)
  check_path("read_into", path)
  if type(into) ~= "table" then fail("read_into", "expected a table of name = tensor (got a " .. type(into) .. ")") end
  call("read_into", st.read_into, path, into)
end

--- Reads and validates the header of a safetensors file without reading
-- any tensor data; useful to look inside a Hugging Face checkpoint.  Returns
--
--     { names = {sorted list of tensor names},
--       tensors = {[name] = {dtype = "F16", shape = {768, 2304},
--                            data_offsets = {begin, end}, nbytes = end - begin,
--                            loads_as = "float32"}},   -- nil when lualign cannot load it
--       metadata = {[key] = value},
--       header_size = N, data_size = bytes after the header }
--
-- Offsets count from the first byte after the header, as in the file.
function M.header(path)
  check_path("header", path)
  local header = call("header", st.header, path)
  return header
end

return M
