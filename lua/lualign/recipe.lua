--- lualign.recipe: what every recipe script shares -- its config (defaults
-- at the top of the script, overridden from the command line or a config
-- file), its run folder, and writing files there safely.
--
--     local config = recipe.config(arg, "sft", {
--       {"lr",    3e-4, "peak learning rate"},
--       {"steps", 500,  "optimizer steps"},
--     })
--     -- lualign recipes/sft.lua lr=1e-3 steps=200     or    ... my_config.lua
--     -- lualign recipes/sft.lua --help                lists every key
--
-- Every config also has `name` (the run folder runs/<name>/), `out_dir`
-- ("runs"), `seed`, `threads`, `resume`, `overwrite` and `stop_at`.  Unknown
-- keys and values of the wrong type are errors that name the key.
--
-- A run folder holds one run.  recipe.run(config) refuses a folder that
-- holds another run (unless overwrite=true, or resume=true with the same
-- config) and writes nothing; the recipe then checks its inputs (loads its
-- models and data) and calls run:start(), which clears the folder (overwrite)
-- and writes config.json.  Files a run computes once and reuses (reference
-- log-probs, a fitted reference) go through run:cached, which records what
-- each was computed from and computes it again when any of that differs.

local core = require "lualign.core"
local sys = require "lualign.sys"
local cjson = require "cjson"
local util = require "lualign.util"
local dist = require "lualign.dist"

local recipe = {}

local common = {
  {"out_dir", "runs", "folder that holds run folders"},
  {"seed", 1, "random seed (model init, sampling, data order)"},
  {"threads", 0, "threads for kernels (0: OpenMP's default)"},
  {"resume", false, "continue from the run folder's last checkpoint"},
  {"overwrite", false, "replace the run already in the run folder (its files are deleted)"},
  {"stop_at", 0, "stop after this step as if interrupted (0: never), to try resume"},
  {"nonfinite", "stop", "on a NaN or inf loss or gradient norm: 'stop' the run, or 'skip' the step"},
}

-- Keys whose value must be one of a few words.
local choices = {nonfinite = {stop = true, skip = true},
                 weights_dtype = {float32 = true, bfloat16 = true, float16 = true}}

local function kind_of(default, declared)
  if declared then return declared end
  if math.type(default) == "integer" then return "integer" end
  return type(default)
end

-- Converts a command-line string to the key's kind, or returns nil and why.
local function convert(key, value, kind)
  if type(value) ~= "string" and kind == "blocks" then   -- true, false or a count
    if value == true then return 1 elseif value == false then return 0 end
    if math.tointeger(value) and value >= 0 then return math.tointeger(value) end
    return nil, string.format("%s must be true, false or a number of blocks (got %s)", key, tostring(value))
  end
  if type(value) ~= "string" then
    local ok = (kind == "integer" and math.type(value) == "integer") or
               (kind == "number" and type(value) == "number") or type(value) == kind
    if ok then return value end
    if kind == "integer" and math.tointeger(value) then return math.tointeger(value) end
    return nil, string.format("%s must be %s %s (got %s)", key, kind == "integer" and "an" or "a", kind, type(value))
  end
  if kind == "integer" then
    local v = math.tointeger(tonumber(value))
    if v then return v end
  elseif kind == "number" then
    local v = tonumber(value)
    if v then return v end
  elseif kind == "boolean" then
    local b = ({["true"] = true, ["1"] = true, yes = true, ["false"] = false, ["0"] = false, no = false})[value]
    if b ~= nil then return b end
  elseif kind == "blocks" then
    local b = ({["true"] = 1, yes = 1, ["false"] = 0, no = 0})[value] or math.tointeger(tonumber(value))
    if b and b >= 0 then return b end
    return nil, string.format("%s must be true, false or a number of blocks (got '%s')", key, value)
  else
    return value
  end
  return nil, string.format("%s must be %s %s (got '%s')", key, kind == "integer" and "an" or "a", kind, value)
end

local function usage(script, specs)
  local lines = {string.format("usage: lualign %s [config.lua] [key=value ...]\n", script), "keys:"}
  local width = 0
  for _, s in ipairs(specs) do width = math.max(width, #s[1]) end
  for _, s in ipairs(specs) do
    -- a newline or tab in a default is shown escaped, keeping one line per key
    local default = tostring(s[2]):gsub("\n", "\\n"):gsub("\t", "\\t")
    lines[#lines + 1] = string.format("  %-" .. width .. "s  %-22s %s", s[1], default, s[3] or "")
  end
  return table.concat(lines, "\n") .. "\n"
end

local function closest(key, specs)
  local names = {}
  for i, s in ipairs(specs) do names[i] = s[1] end
  return util.closest(key, names)
end

--- Parses argv (the script's `arg`) against specs, a list of {key, default,
-- description [, kind]}; `name` defaults to default_name.  Returns the
-- config table.  --help prints every key and exits; a bad argument raises an
-- error naming it.
function recipe.config(argv, default_name, specs)
  local all = {{"name", default_name, "run name: results go to <out_dir>/<name>/"}}
  for _, s in ipairs(specs) do all[#all + 1] = s end
  for _, s in ipairs(common) do all[#all + 1] = s end
  local kinds, config = {}, {}
  for _, s in ipairs(all) do
    kinds[s[1]] = kind_of(s[2], s[4])
    config[s[1]] = s[2]
  end
  local script = argv and argv[0] or "recipe.lua"
  local function set(key, value, origin)
    if not kinds[key] then
      local hint = closest(key, all)
      error(string.format("%s: unknown config key '%s'%s (see --help)", origin, key,
        hint and (" -- did you mean '" .. hint .. "'?") or ""), 0)
    end
    local v, why = convert(key, value, kinds[key])
    if v == nil then error(origin .. ": " .. why, 0) end
    if choices[key] and not choices[key][v] then
      local words = {}
      for w in pairs(choices[key]) do words[#words + 1] = "'" .. w .. "'" end
      table.sort(words)
      error(string.format("%s: %s must be %s (got '%s')", origin, key, table.concat(words, " or "), tostring(v)), 0)
    end
    config[key] = v
  end
  for i = 1, #(argv or {}) do
    local a = argv[i]
    if a == "--help" or a == "-h" then
      io.write(usage(script, all))
      os.exit(0)
    end
    local key, value = a:match("^([%w_]+)=(.*)$")
    if key then
      set(key, value, "argument '" .. a .. "'")
    elseif a:match("%.lua$") then
      local chunk, err = loadfile(a, "t", {})
      if not chunk then error("config file: " .. err, 0) end
      local ok, t = pcall(chunk)
      if not ok or type(t) ~= "table" then
        error(string.format("config file %s must return a table of keys (%s)", a, ok and type(t) or t), 0)
      end
      for k, v in pairs(t) do set(k, v, a) end
    else
      error(string.format("argument '%s': expected key=value or a config .lua file (see --help)", a), 0)
    end
  end
  if config.threads > 0 then core.set_num_threads(config.threads) end
  core.manual_seed(config.seed)
  return config
end

--- Checks that config[key] is one of `words` (a list), or raises
-- "KEY must be one of a, b, c (got 'x')" -- with a did-you-mean.
function recipe.check_choice(config, key, words)
  for _, w in ipairs(words) do if config[key] == w then return config[key] end end
  local hint = util.closest(tostring(config[key]), words)
  error(string.format("%s must be one of %s (got '%s')%s", key, table.concat(words, ", "), tostring(config[key]),
    hint and (" -- did you mean '" .. hint .. "'?") or ""), 0)
end

--- Runs a recipe script in this process with key=value arguments (a table
-- key -> value) and returns what the script returns.  The global `arg` is the
-- script's while it runs.
function recipe.run_script(path, args)
  local argv = {[0] = path}
  for k, v in pairs(args or {}) do argv[#argv + 1] = k .. "=" .. tostring(v) end
  table.sort(argv)
  local chunk, err = loadfile(path)
  if not chunk then error(err, 2) end
  local saved = arg
  arg = argv
  local ok, result = pcall(chunk, table.unpack(argv))
  arg = saved
  collectgarbage("collect")
  if not ok then error(result, 0) end
  return result
end

--- Stops the run after `step` when config.stop_at asks for it, as an
-- interruption would (the checkpoint already written is what resume uses).
function recipe.check_stop(config, step, logger)
  if config.stop_at > 0 and step == config.stop_at then
    if logger then logger:close() end
    error(string.format("%s: stopped after step %d (stop_at)", config.name, step), 0)
  end
end

----------------------------------------------------------------------------
-- Run folders

local Run = {}
Run.__index = Run

-- Keys a resumed run may change: they steer how it runs, not what it computes.
local RESUME_FREE = {resume = true, overwrite = true, stop_at = true, threads = true, nonfinite = true,
                     out_dir = true}

local function is_dir_empty(dir)
  local names = sys.listdir(dir)
  return names == nil or #names == 0, names
end

-- The keys whose values differ between a config and the one in config.json.
local function config_changes(saved, config)
  local function shown(v) return type(v) == "string" and ("'" .. v .. "'") or recipe.json(v) end
  local changed = {}
  for _, k in ipairs(util.sorted_keys(config)) do
    if not RESUME_FREE[k] and recipe.json(saved[k]) ~= recipe.json(config[k]) then
      changed[#changed + 1] = string.format("%s=%s (the run has %s)", k, shown(config[k]), shown(saved[k]))
    end
  end
  return changed
end

-- Refuses a folder that holds another run: anything in it, for a run that
-- does not resume; a run of another config (or no run), for one that does.
local function check_folder(dir, config)
  local way_out = "to replace it: overwrite=true; to keep it: a new name="
  if config.resume and config.overwrite then
    error(string.format("%s: resume=true and overwrite=true contradict each other (resume continues the run in %s, "
      .. "overwrite deletes it)", config.name, dir), 0)
  end
  local empty, names = is_dir_empty(dir)
  if empty then return end
  if config.resume then
    local f = io.open(dir .. "/config.json", "rb")
    if not f then
      error(string.format("%s: cannot resume: %s holds no run (no config.json); %s", config.name, dir, way_out), 0)
    end
    local ok, saved = pcall(cjson.decode, f:read("a"))
    f:close()
    if not ok or type(saved) ~= "table" then
      error(string.format("%s: cannot resume: %s/config.json is not a run's config; %s", config.name, dir, way_out), 0)
    end
    local changed = config_changes(saved, config)
    if #changed > 0 then
      error(string.format("%s: cannot resume the run in %s with another config: %s (resume continues a run as it "
        .. "was started; %s)", config.name, dir, table.concat(changed, ", "), way_out), 0)
    end
  elseif not config.overwrite then
    local shown = {table.unpack(names, 1, math.min(#names, 4))}
    error(string.format("%s: %s already holds a run (%s%s); %s (or resume=true to continue it)", config.name, dir,
      table.concat(shown, ", "), #names > #shown and ", ..." or "", way_out), 0)
  end
end

-- Deletes what a folder holds (files and folders below it), keeping the folder.
local function clear_folder(dir)
  for _, name in ipairs(sys.listdir(dir) or {}) do
    local path = dir .. "/" .. name
    if sys.listdir(path) then clear_folder(path) end
    local ok, err = os.remove(path)
    if not ok then error("cannot delete " .. err, 0) end
  end
end

--- The run folder <out_dir>/<name>/ of a recipe.  Nothing is written yet:
-- a folder that holds another run is refused here (an error naming the
-- folder and the way out: overwrite=true or a new name=), and resume=true
-- must come with the config the run was started with (all but resume,
-- overwrite, stop_at, threads, nonfinite).  The recipe then checks its
-- inputs and calls run:start().  While the run exists, JSONL fields that the
-- data readers ignore are printed, once per file (see lualign.data).
-- In a data-parallel job only rank 0 writes the run folder: the other ranks'
-- run folder is a private one of their own (la.dist.private_dir), so a recipe
-- that reads back a file it wrote behaves the same on every rank; they write
-- no checkpoint and resume from rank 0's.
function recipe.run(config)
  local dir = config.out_dir .. "/" .. config.name
  if not dist.is_main() then dir = dist.private_dir(config.name) end
  check_folder(dir, config)
  local self = setmetatable({dir = dir, config = config, started = false}, Run)
  local seen = {}
  require("lualign.data").on_ignored_fields(function(note)
    local key = note.kind .. "\0" .. note.path
    if not seen[key] then seen[key] = true; print(config.name .. ": " .. note.text) end
  end)
  return self
end

--- Starts writing the run folder, once the recipe's inputs are checked: with
-- overwrite=true, deletes the earlier run's files; creates the folder; on
-- resume, removes the temporary files that a run killed while it wrote a
-- file leaves behind (".NAME.tmp-..." and "NAME.tmp"); writes config.json.
function Run:start()
  if self.started then return self end
  local ok, err = sys.mkdir(self.dir)
  if not ok then error(err, 2) end
  if self.config.overwrite and not is_dir_empty(self.dir) then
    print(string.format("%s: overwrite=true: deleting the earlier run in %s", self.config.name, self.dir))
    clear_folder(self.dir)
  end
  if self.config.resume then
    for _, name in ipairs(sys.listdir(self.dir) or {}) do
      if name:match("^%..+%.tmp%-%d+%-%d+%-%d+$") or name:match("%.tmp$") then os.remove(self.dir .. "/" .. name) end
    end
  end
  self.started = true
  self:write_json("config.json", self.config)
  return self
end

--- Path of a file in the run folder.
function Run:path(file) return self.dir .. "/" .. file end

-- Writing before run:start() would put files in a folder whose inputs are not checked yet.
local function check_started(self, what)
  if not self.started then
    error(string.format("%s: %s before run:start() (a run writes nothing until its inputs are checked)",
      self.config.name, what), 3)
  end
end

--- Writes text to a file of the run folder atomically (temp file, fsync, rename).
function Run:write(file, text)
  check_started(self, "writing " .. file)
  recipe.write_atomic(self:path(file), text)
end

function Run:write_json(file, value)
  self:write(file, recipe.json(value) .. "\n")
end

-- Whether a file can be opened.
local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- Whether a file exists in the run folder.
function Run:exists(file) return file_exists(self:path(file)) end

----------------------------------------------------------------------------
-- Inputs, and the files a run computes once

--- What a file is, for telling whether something was computed from it: its
-- size and a digest of its bytes ({bytes = n, digest = "16 hex digits"}).
function recipe.file_identity(path)
  local digest, bytes = sys.file_digest(path)
  if not digest then error(bytes, 2) end
  return {bytes = bytes, digest = digest}
end

-- The top-level keys whose values differ between two input tables.
local function input_changes(old, new)
  local keys, changed = {}, {}
  for k in pairs(old) do keys[k] = true end
  for k in pairs(new) do keys[k] = true end
  for _, k in ipairs(util.sorted_keys(keys)) do
    if recipe.json(old[k]) ~= recipe.json(new[k]) then changed[#changed + 1] = k end
  end
  return changed
end

--- A file of the run folder that the run computes once and then reuses:
-- returns its path, after build(path) has written it unless the file there
-- was computed from the same `inputs` (a JSON-able table: file identities
-- from recipe.file_identity, and every setting that changes the result).
-- caches.json records, for each such file, its inputs and its own identity,
-- so a file computed from other inputs, or changed since, is computed again
-- (with a line saying which inputs differ).
function Run:cached(file, inputs, build)
  check_started(self, "computing " .. file)
  local records = {}
  if self:exists("caches.json") then
    local f = assert(io.open(self:path("caches.json"), "rb"))
    records = cjson.decode(f:read("a"))
    f:close()
  end
  local path, record = self:path(file), records[file]
  if record and self:exists(file) then
    local changed = input_changes(record.inputs or {}, inputs)
    if #changed == 0 and recipe.json(record.identity) == recipe.json(recipe.file_identity(path)) then
      print(string.format("%s: reusing %s (computed from the same inputs)", self.config.name, file))
      return path
    end
    print(string.format("%s: computing %s again: %s", self.config.name, file, #changed > 0 and
      ("it was computed from another " .. table.concat(changed, ", ")) or "the file has changed since it was computed"))
  end
  build(path)
  records[file] = {inputs = inputs, identity = recipe.file_identity(path)}
  self:write_json("caches.json", records)
  return path
end

--- The path of a data file named by config key `key`: the file itself when
-- it exists, else the bundled dataset of that name (la.data.path); an error
-- naming the key and the file when neither exists.
function recipe.data_file(path, key)
  local f = io.open(path, "rb")
  if f then f:close(); return path end
  local data = require "lualign.data"
  local ok, found = pcall(data.path, path)
  if ok then return found end
  error(string.format("%s: no such file: %s (nor a bundled dataset of that name in %s)", key, path,
    table.concat(data.search_dirs(), ", ")), 0)
end

----------------------------------------------------------------------------
-- Models and tokenizers: a lualign run or a Hugging Face folder

-- Whether a safetensors file was written by lualign (Run:save_model): its
-- metadata holds the model's config.
local function lualign_model_file(file)
  local ok, header = pcall(require("lualign.checkpoint").header, file)
  return ok and header.metadata and header.metadata.model_config ~= nil
end

-- config.json of a folder, decoded, or nil.
local function json_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local ok, v = pcall(cjson.decode, f:read("a"))
  f:close()
  return ok and type(v) == "table" and v or nil
end

--- What a model path named by config key `key` is: a lualign run folder (its
-- model.safetensors holds the model config in its metadata), a .safetensors
-- file written by lualign, or a Hugging Face model folder (config.json with a
-- model_type, and safetensors weights: what la.models.from_pretrained reads,
-- e.g. a downloaded SmolLM2 or Qwen2.5 folder, or a run's hf/ folder).
-- Returns {kind = "run" or "hf", path = the path given, dir = the folder
-- (where the tokenizer files are), file = the weights file of a run}.  An
-- error names the key when the path is none of these.
function recipe.model_source(path, key)
  if type(path) ~= "string" or path == "" then error(key .. ": expected a run folder or a model folder", 0) end
  path = path:gsub("/+$", "")
  if path:match("%.safetensors$") then
    if not file_exists(path) then error(string.format("%s: no such model file: %s", key, path), 0) end
    if not lualign_model_file(path) then
      error(string.format("%s: %s holds no model_config in its metadata: not a model file lualign wrote "
        .. "(for a Hugging Face model give its folder)", key, path), 0)
    end
    return {kind = "run", path = path, dir = path:match("^(.*)/[^/]*$") or ".", file = path}
  end
  if not sys.listdir(path) then
    error(string.format("%s: no such run folder, model file or Hugging Face model folder: %s", key, path), 0)
  end
  local file = path .. "/model.safetensors"
  if lualign_model_file(file) then return {kind = "run", path = path, dir = path, file = file} end
  local cfg = json_file(path .. "/config.json")
  if cfg and type(cfg.model_type) == "string" then return {kind = "hf", path = path, dir = path} end
  error(string.format("%s: the run folder %s holds no model.safetensors (has its run finished?), nor is it a "
    .. "Hugging Face model folder (config.json with a model_type)", key, path), 0)
end

--- The model a path names (recipe.model_source: a lualign run, its
-- model.safetensors, or a Hugging Face folder read by
-- la.models.from_pretrained), and the metadata of a lualign file ({} for a
-- Hugging Face folder).  overrides change config keys (e.g. {value_head =
-- true} adds a freshly initialised head).  key names the config key in
-- errors ("model" by default).  recipe.load_gpt is the same function.
function recipe.load_model(path, overrides, key)
  local source = type(path) == "table" and path or recipe.model_source(path, key or "model")
  if source.kind == "hf" then
    return require("lualign.models").from_pretrained(source.dir, overrides), {}
  end
  local checkpoint = require "lualign.checkpoint"
  local tensors, meta = checkpoint.load(source.file)
  local cfg = require("lualign.models.hf").integers(cjson.decode(meta.model_config))
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  local model
  if cfg.model_type then
    model = require("lualign.models").from_config(cfg)
  else
    model = require("lualign.models.gpt")(cfg)
  end
  -- Heads added by overrides keep their fresh initialisation.
  model:load_state_dict(tensors, {strict = not overrides})
  return model, meta
end
recipe.load_gpt = recipe.load_model

--- The model file of a run folder, or the folder of a Hugging Face model,
-- named by config key `key` -- what recipe.load_model takes -- and the
-- folder its tokenizer files are in; the source (recipe.model_source) third.
function recipe.model_file(path, key)
  local source = recipe.model_source(path, key)
  return source.file or source.dir, source.dir, source
end

-- name -> identity of the files of a folder whose names keep(name) accepts.
local function folder_identity(dir, keep)
  local ids = {}
  for _, name in ipairs(sys.listdir(dir) or {}) do
    if keep(name) then ids[name] = recipe.file_identity(dir .. "/" .. name) end
  end
  return ids
end

--- What a model was loaded from, for run:cached's inputs: the identity of
-- its weights file, or of a Hugging Face folder's config.json and weights.
function recipe.model_identity(path)
  local source = type(path) == "table" and path or recipe.model_source(path, "model")
  if source.kind == "run" then return recipe.file_identity(source.file) end
  return folder_identity(source.dir, function(name)
    return name == "config.json" or name:match("%.safetensors$") or name == "model.safetensors.index.json"
  end)
end

--- What a tokenizer was loaded from (the folder recipe.load_tokenizer
-- returns, or the file), for run:cached's inputs: its tokenizer files'
-- identities.
function recipe.tokenizer_identity(dir)
  if not sys.listdir(dir) then return {file = recipe.file_identity(dir)} end
  local names = {["encoder.json"] = true, ["vocab.bpe"] = true}
  for _, f in ipairs(require("lualign.models.hf").tokenizer_files) do names[f] = true end
  return folder_identity(dir, function(name) return names[name] end)
end

--- The tokenizer of a run: the file or folder `given` (config key
-- `tokenizer`), else the one in the model's folder -- a run's tokenizer.json,
-- or a Hugging Face folder's tokenizer.json with its tokenizer_config.json
-- (roles, chat template).  Returns the tokenizer and the folder its files
-- are in (run:save_tokenizer copies them into the run; nil for a file not
-- named tokenizer.json).
function recipe.load_tokenizer(given, model_dir, key)
  local path = (given and given ~= "") and given or model_dir
  local is_dir = sys.listdir(path) ~= nil
  if not is_dir and not file_exists(path) then
    error(string.format("%s: no such tokenizer file or folder: %s", key or "tokenizer", path), 0)
  end
  if is_dir and not file_exists(path .. "/tokenizer.json") and not file_exists(path .. "/encoder.json") then
    error(string.format("%s: %s holds no tokenizer.json%s", key or "tokenizer", path,
      (given and given ~= "") and "" or " (give one with tokenizer=FILE_OR_FOLDER)"), 0)
  end
  local tok = require("lualign.tokenizer").load(path)
  if is_dir then return tok, path end
  -- a tokenizer.json beside its configuration: that folder; a file of another name: none (tok:save writes it)
  if path:match("^tokenizer%.json$") or path:match("/tokenizer%.json$") then return tok, path:match("^(.*)/[^/]*$") or "." end
  return tok, nil
end

--- Writes the run's tokenizer into its folder: the tokenizer files of the
-- folder it was loaded from, copied as they are (a Hugging Face tokenizer's
-- pipeline and chat template stay exact), or tok:save for a tokenizer made
-- in memory or read from GPT-2's encoder.json and vocab.bpe.
function Run:save_tokenizer(tok, from_dir)
  check_started(self, "writing the tokenizer")
  if from_dir == self.dir then return end
  if from_dir and #require("lualign.models.hf").copy_tokenizer_files(from_dir, self.dir) > 0 then return end
  tok:save(self:path("tokenizer.json"))
end

--- The trained model at the end of a run, ready for Hugging Face tools and
-- for any recipe's policy=/base=: without lora, <run>/hf/ through
-- save_pretrained, with the run's tokenizer files; with lora, the adapter
-- in PEFT's format (<run>/adapter/) and, with save_merged, the merged model
-- (<run>/merged/).  opts.reward_model: a reward model, written as a
-- sequence-classification folder (its head is Hugging Face's bias-free
-- `score`: a bias the head learned is left out, which shifts every reward by
-- the same amount and is said in a line).  Only rank 0 writes.  Returns the
-- folder written.
function recipe.save_final(run, model, config, opts)
  if not dist.is_main() then return nil end
  local hf_opts = {reward_model = opts and opts.reward_model or nil}
  if hf_opts.reward_model then
    local b = model.reward_head.bias:item()
    if b ~= 0 then
      print(string.format("%s: the reward head's bias b = %.6g has no place in Hugging Face's score layer: the "
        .. "folder's rewards are this run's minus b (the same order and Bradley-Terry probabilities)", config.name, b))
    end
  end
  if config.lora then
    local lora = require "lualign.lora"
    lora.save(model, run:path("adapter"))
    if not config.save_merged then return run:path("adapter") end
    lora.merge(model)
    model:save_pretrained(run:path("merged"), hf_opts)
    lora.unmerge(model)
    require("lualign.models.hf").copy_tokenizer_files(run.dir, run:path("merged"))
    return run:path("merged")
  end
  local dir = run:path("hf")
  model:save_pretrained(dir, hf_opts)
  require("lualign.models.hf").copy_tokenizer_files(run.dir, dir)
  return dir
end

--- Options for model:generate that sample from the model's own distribution
-- (at `temperature`), whatever a Hugging Face folder's generation_config.json
-- asks for (top_k 50, top_p, repetition_penalty): what a policy's rollouts,
-- their log-probs and a KL estimate assume.  Generation stops on the
-- tokenizer's end ids (tok.eos_ids: a chat model's end-of-turn too).  opts
-- adds or replaces options.
function recipe.sampling_options(tok, opts)
  local o = {temperature = 1.0, top_k = 0, top_p = 1.0, repetition_penalty = 1.0,
             eos_id = tok.eos_ids or tok.eos_id, pad_id = tok.pad_id or tok.eos_id}
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

--- A judge of sampled responses, named by config key `key`: "lexicon" (the
-- bundled VADER lexicon's mean rating of the response), a .lua file that
-- returns function(prompt, response) -> number, or a reward model (a
-- reward.lua run or a sequence-classification folder; it reads the policy's
-- tokens, so it must share the policy's vocabulary: vocab_size is checked).
-- Returns {name = ..., scores = function(s) -> list}, where s holds
-- `prompts` and `responses` (texts) and `batch` (generate's out.batch).
function recipe.load_judge(spec, key, vocab_size)
  if spec == "lexicon" then
    local lexicon = require("lualign.data").judge()
    return {name = "lexicon (VADER ratings)", scores = function(s)
      local out = {}
      for i, text in ipairs(s.responses) do out[i] = lexicon:score(text) end
      return out
    end}
  end
  if spec:match("%.lua$") then
    local chunk, err = loadfile(spec)
    if not chunk then error(key .. ": " .. err, 0) end
    local fn = chunk()
    if type(fn) ~= "function" then
      error(string.format("%s: %s must return function(prompt, response) -> number (it returned a %s)", key, spec,
        type(fn)), 0)
    end
    return {name = spec, scores = function(s)
      local out = {}
      for i, text in ipairs(s.responses) do
        local v = fn(s.prompts[i], text)
        if type(v) ~= "number" then
          error(string.format("%s: %s returned a %s for a response, not a number", key, spec, type(v)), 0)
        end
        out[i] = v
      end
      return out
    end}
  end
  local source = recipe.model_source(spec, key)
  local rm = recipe.load_model(source)
  rm:requires_grad(false):eval()
  if not rawget(rm, "reward_head") then
    error(string.format("%s: %s has no reward head (a reward.lua run or a sequence-classification folder)", key, spec), 0)
  end
  local v = rm.config.vocab_size
  if vocab_size and v ~= vocab_size then
    error(string.format("%s: the reward model's vocabulary (%d) is not the policy's (%d): it must read the "
      .. "policy's tokens", key, v, vocab_size), 0)
  end
  return {name = "reward model " .. spec, scores = function(s)
    local b = s.batch
    return require("lualign").no_grad(function()
      return rm:rewards(rm:hidden(b.ids, {attention_mask = b.attention_mask, position_ids = b.position_ids}),
        b.attention_mask):totable()
    end)
  end}
end

--- Whether config key `key` names a bundled data file under `prefix` (as
-- "vader/" or "qa/"), not a file of one's own of the same name.
function recipe.is_bundled(config, key, prefix)
  local path = config[key]
  if path:sub(1, #prefix) ~= prefix then return false end
  local ok, bundled = pcall(require("lualign.data").path, path)
  return ok and recipe.data_file(path, key) == bundled
end

--- config[key], or when it is "auto", `for_bundled` if the run's data is
-- bundled (`bundled`, a boolean) and `otherwise` if not: the defaults that
-- only make sense for the bundled data (its held-out files, its judge).
function recipe.auto(config, key, bundled, for_bundled, otherwise)
  if config[key] ~= "auto" then return config[key] end
  if bundled then return for_bundled end
  return otherwise
end

--- A recipe's held-out examples (`kind`: "sft" or "preference"): those of
-- the file `spec` (named by config key `key`), or with spec "" a share
-- `fraction` of the training examples by prompt (la.data.split_by_prompt:
-- whole prompts, the same whatever the seed or the order of the lines),
-- which then leave the training list.  Returns the training list, the
-- held-out list, a name for messages and reports, and what the held-out
-- examples were taken from (for run:cached's inputs).  An error says so when
-- the share holds no example.
function recipe.held_out(train, train_file, spec, fraction, kind, key)
  if spec ~= "" then
    local file = recipe.data_file(spec, key)
    return train, require("lualign.data").load(file, kind), file, recipe.file_identity(file)
  end
  if type(fraction) ~= "number" or not (fraction > 0 and fraction < 1) then
    error(string.format("eval_fraction must be in (0, 1) (got %s)", tostring(fraction)), 0)
  end
  local kept, held = require("lualign.data").split_by_prompt(train, fraction)
  if #held == 0 or #kept == 0 then
    error(string.format("eval_fraction=%g held out %s of %s's %d examples (too few distinct prompts); give %s=FILE "
      .. "or another eval_fraction", fraction, #held == 0 and "none" or "all", train_file, #train, key), 0)
  end
  return kept, held, string.format("%s (%d held-out examples, eval_fraction %g)", train_file, #held, fraction),
    {train = recipe.file_identity(train_file), eval_fraction = fraction}
end

--- Prints a line on a data set the run uses -- how many examples, and how
-- many of them the length limits cut ("sft: train (qa/train.jsonl): 3263
-- examples, 12 truncated at max_len 128") -- and returns the same as metrics
-- for the run's first row ({["train/examples"] = 3263, ["train/truncated"] = 12}).
-- data: a loader of lualign.data, or a table {examples = n, truncated = k,
-- limits = "max_len 128", name = file}.
function recipe.describe_data(config, what, data)
  local n = data.examples or #data
  local cut = data.truncated or 0
  local where = data.name and (" (" .. data.name .. ")") or ""
  local limits = data.limits and string.format(", %d truncated at %s", cut, data.limits) or ", no length limit"
  print(string.format("%s: %s%s: %d examples%s", config.name, what, where, n, limits))
  return {[what .. "/examples"] = n, [what .. "/truncated"] = cut}
end

--- Whether a recipe evaluates after `step`: every config.eval_every steps
-- and after the last one (`total`); never when eval_every is 0, which turns
-- evaluation off.
function recipe.eval_due(config, step, total)
  return config.eval_every > 0 and (step % config.eval_every == 0 or step == total)
end

----------------------------------------------------------------------------
-- Checkpoints that resume

--- Saves everything a run needs to continue, in one file written atomically
-- (checkpoint.safetensors): the model's tensors ("model." names), the
-- optimizer's ("optim." names), and in the metadata the step, the optimizer's
-- scalars, the generator's state and `extra` (a JSON-able table: data
-- position, schedules, anything else the loop needs).  Also writes the
-- weights alone to model.safetensors, for the next stage to load.
--
-- Nothing is written when a tensor holds NaN or inf: the error says which,
-- and the last good checkpoint stays.  model.safetensors is written first, so
-- that a run killed between the two files resumes from the older checkpoint
-- and writes both again, rather than keeping a model file older than the
-- checkpoint it resumed from.
--
-- In a data-parallel job rank 0 writes the job's checkpoint, and every rank
-- returns once it is on disk, so that a rank stopping right after (stop_at,
-- an error) cannot end the job while the file is being written.
--
-- `others` adds more models to the same file, each with its optimizer:
-- {critic = {value_model, value_optimizer}} (names "critic.model.*",
-- "critic.optim.*"), restored by restore_checkpoint(model, optimizer, others),
-- so that a run with several trained models resumes from one consistent file.
function Run:save_checkpoint(model, optimizer, step, extra, others)
  if not dist.is_main() then dist.barrier() return end
  local checkpoint = require "lualign.checkpoint"
  local tensors = {}
  local function add(prefix, m, opt)
    for name, t in pairs(m:state_dict()) do tensors[prefix .. "model." .. name] = t end
    if not opt then return {} end
    local opt_tensors, s = opt:state_dict()
    for name, t in pairs(opt_tensors) do tensors[prefix .. "optim." .. name] = t end
    return s
  end
  local scalars = add("", model, optimizer)
  local other_scalars = {}
  for key, pair in pairs(others or {}) do other_scalars[key] = add(key .. ".", pair[1], pair[2]) end
  local path = self:path("checkpoint.safetensors")
  recipe.check_finite_tensors("save_checkpoint", path, tensors)
  self:save_model(model, {step = tostring(step)})
  checkpoint.save(path, tensors, {
    step = tostring(step), optimizer = recipe.json(scalars),
    rng = recipe.json(core.get_rng_state()), extra = recipe.json(extra or {}),
    others = next(other_scalars) and recipe.json(other_scalars) or nil,
  })
  dist.barrier()
end

--- Writes the model's weights to <run>/<file> (default model.safetensors)
-- with the run's config in the metadata.
-- Refuses (an error naming the tensor) weights that hold NaN or inf.
function Run:save_model(model, metadata, file)
  local checkpoint = require "lualign.checkpoint"
  check_started(self, "saving " .. (file or "model.safetensors"))
  local path = self:path(file or "model.safetensors")
  local tensors = recipe.model_weights(model)
  recipe.check_finite_tensors("save_model", path, tensors)
  local meta = {config = recipe.json(self.config)}
  if model.config then meta.model_config = recipe.json(model.config) end
  for k, v in pairs(metadata or {}) do meta[k] = tostring(v) end
  checkpoint.save(path, tensors, meta)
end

--- Raises an error naming the first tensor (by sorted name) of `tensors`
-- (name -> tensor) that holds NaN or inf; `what` and `path` start the message.
function recipe.check_finite_tensors(what, path, tensors)
  local names = {}
  for name in pairs(tensors) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    if not tensors[name]:all_finite() then
      error(string.format("%s: refusing to write %s: tensor '%s' holds NaN or inf (the run has diverged; "
        .. "the file on disk, if any, is left as it was)", what, path, name), 0)
    end
  end
end

----------------------------------------------------------------------------
-- Non-finite losses and gradients

-- Per config: steps skipped in a row and in all (kept out of the config
-- itself, which is written to config.json and model metadata).
local skips = setmetatable({}, {__mode = "k"})

--- The number of steps recipe.finite_step has skipped for this config.
function recipe.skipped_steps(config)
  return skips[config] and skips[config].total or 0
end

local function value_of(v)
  if core.is_tensor(v) then return v:item() end
  return v
end

local function describe(v)
  if v ~= v then return "nan" end
  return v > 0 and "inf" or "-inf"
end

--- Checks a training step before the optimizer applies it.  loss: a number or
-- a one-element tensor; grad: the gradient norm (a number, e.g. what
-- clip_grad_norm returned), or the model (or a list of parameters) to compute
-- it from, or nil.  Returns true when both are finite.  Otherwise, by
-- config.nonfinite: "stop" raises an error naming the step and the value (the
-- last checkpoint is left as it was); "skip" notes the step (through logger
-- when given) and returns false, so the caller leaves out opt:step().  A run
-- that skips `recipe.MAX_SKIPS` steps in a row stops all the same.
--
--     if recipe.finite_step(config, step, loss, norm or model, logger) then opt:step() end
function recipe.finite_step(config, step, loss, grad, logger)
  local bad
  local l = value_of(loss)
  if type(l) == "number" and (l ~= l or l == math.huge or l == -math.huge) then
    bad = "loss " .. describe(l)
  else
    local g = grad
    if type(g) == "table" or core.is_tensor(g) then
      g = core.is_tensor(g) and g:item() or require("lualign.optim").clip_grad_norm(g, 0)
    end
    if type(g) == "number" and (g ~= g or g == math.huge or g == -math.huge) then
      bad = "gradient norm " .. describe(g)
    end
  end
  local state = skips[config] or {in_a_row = 0, total = 0}
  skips[config] = state
  state.in_a_row = bad and state.in_a_row + 1 or 0
  if not bad then return true end
  local name = config.name or "recipe"
  if config.nonfinite == "skip" and state.in_a_row < recipe.MAX_SKIPS then
    state.total = state.total + 1
    local note = string.format("%s: step %d skipped: non-finite %s (nonfinite=skip)", name, step, bad)
    if logger then logger:note(note) else print(note) end
    return false
  end
  if logger then logger:close() end
  if config.nonfinite == "skip" then
    error(string.format("%s: stopped at step %d: %d steps in a row had a non-finite loss or gradient "
      .. "norm (the last: %s); the run has diverged", name, step, state.in_a_row, bad), 0)
  end
  error(string.format("%s: stopped at step %d: non-finite %s (nonfinite=stop; nonfinite=skip skips "
    .. "such steps instead); the last checkpoint is left as it was", name, step, bad), 0)
end

--- Steps in a row that nonfinite = "skip" skips before it stops the run.
recipe.MAX_SKIPS = 20

--- Restores a checkpoint written by save_checkpoint into model and
-- optimizer (and the generator; and `others`, as save_checkpoint took them).
-- Returns the step and the extra table, or nil when the run folder has no
-- checkpoint.  In a data-parallel job rank 0 reads it and every rank gets its
-- tensors and metadata.
function Run:restore_checkpoint(model, optimizer, others)
  local tensors, meta
  if dist.is_main() and self:exists("checkpoint.safetensors") then
    tensors, meta = require("lualign.checkpoint").load(self:path("checkpoint.safetensors"))
  end
  tensors, meta = dist.broadcast_state(tensors, meta)
  if not tensors then return nil end
  local parts = {[""] = {{}, {}}}
  for key in pairs(others or {}) do parts[key .. "."] = {{}, {}} end
  for name, t in pairs(tensors) do
    local prefix, rest = name:match("^([%w_]+%.)(.*)$")
    if not parts[prefix] or not (rest:match("^model%.") or rest:match("^optim%.")) then prefix, rest = "", name end
    local m = rest:match("^model%.(.*)$")
    if m then parts[prefix][1][m] = t else parts[prefix][2][rest:match("^optim%.(.*)$") or rest] = t end
  end
  model:load_state_dict(parts[""][1])
  if optimizer then optimizer:load_state_dict(parts[""][2], cjson.decode(meta.optimizer or "{}")) end
  local other_scalars = cjson.decode(meta.others or "{}")
  for key, pair in pairs(others or {}) do
    if not other_scalars[key] then
      error(string.format("%s: the checkpoint holds no '%s' model to resume", self.config.name, key), 0)
    end
    pair[1]:load_state_dict(parts[key .. "."][1])
    if pair[2] then pair[2]:load_state_dict(parts[key .. "."][2], other_scalars[key]) end
  end
  if meta.rng then core.set_rng_state(cjson.decode(meta.rng)) end
  return math.tointeger(tonumber(meta.step)) or 0, cjson.decode(meta.extra or "{}")
end

--- Loads a model's weights from a safetensors file (model.safetensors of an
-- earlier stage, or a checkpoint's "model." tensors).
function recipe.load_weights(model, path)
  local checkpoint = require "lualign.checkpoint"
  local tensors = checkpoint.load(path)
  local prefixed = {}
  for name, t in pairs(tensors) do
    local m = name:match("^model%.(.*)$")
    if m then prefixed[m] = t end
  end
  local ok, err = pcall(model.load_state_dict, model, next(prefixed) and prefixed or tensors)
  if not ok then error(path .. ": " .. tostring(err):gsub("^[^:]*:%d+: ", ""), 2) end
  return model
end


--- Raises an error saying both numbers when a loader's data is smaller than
-- one batch (so it would yield nothing): a recipe checks its training data
-- with it before run:start().
function recipe.check_batches(loader)
  if loader:num_batches(1) > 0 then return loader end
  local packed = loader.group and string.format(" (packed into %d rows)", #loader.group(loader.items)) or ""
  error(string.format("%s: %d examples%s are fewer than one batch of %d (batch_size); lower batch_size "
    .. "or give more data", loader.name or "data", #loader, packed, loader.batch_size), 0)
end

--- Batches from a loader across epochs, skipping the first `done` batches (a
-- resumed run): for step, batch, epoch in recipe.batches(loader, done) do ... end
-- The order only depends on the loader's seed, so a resumed run sees the
-- batches the uninterrupted one would have.
function recipe.batches(loader, done)
  recipe.check_batches(loader)
  done = done or 0
  local epoch, skip = 1, done
  while true do
    local n = loader:num_batches(epoch)
    if skip < n then break end
    skip, epoch = skip - n, epoch + 1
  end
  local step, it = done, loader:epoch(epoch)
  for _ = 1, skip do it() end
  return function()
    local b = it()
    if not b then
      epoch = epoch + 1
      it = loader:epoch(epoch)
      b = it()
    end
    step = step + 1
    return step, b, epoch
  end
end

--- Every string value of every JSON object in a JSONL file (prompts,
-- completions, chosen and rejected texts), e.g. to train a tokenizer on.
function recipe.jsonl_texts(path)
  local texts = {}
  local function collect(v)
    if type(v) == "string" then texts[#texts + 1] = v
    elseif type(v) == "table" then for _, x in pairs(v) do collect(x) end end
  end
  for line in io.lines(path) do
    if line:match("%S") then collect(cjson.decode(line)) end
  end
  return texts
end

----------------------------------------------------------------------------
-- Reports

--- string.format(fmt, v), or `none` ("-" by default) when v is nil: for
-- report cells whose measure was not taken (eval_every=0, a resumed run).
function recipe.fmt(fmt, v, none)
  if v == nil then return none or "-" end
  return string.format(fmt, v)
end

--- A Markdown table from a header list and rows (lists of cells).
function recipe.md_table(header, rows)
  local lines = {"| " .. table.concat(header, " | ") .. " |",
                 "|" .. string.rep("---|", #header)}
  for _, r in ipairs(rows) do
    local cells = {}
    for i, c in ipairs(r) do
      cells[i] = type(c) == "number" and (math.type(c) == "integer" and tostring(c) or string.format("%.4g", c)) or tostring(c)
    end
    lines[#lines + 1] = "| " .. table.concat(cells, " | ") .. " |"
  end
  return table.concat(lines, "\n")
end

--- Writes text to path so that a crash leaves either the old or the new file.
function recipe.write_atomic(path, text)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then error("cannot write " .. path .. ": " .. err, 2) end
  local ok, werr = f:write(text)
  f:close()
  if not ok then os.remove(tmp); error("cannot write " .. path .. ": " .. tostring(werr), 2) end
  local done, cerr = sys.commit(tmp, path)
  if not done then error(cerr, 2) end
end

----------------------------------------------------------------------------
-- Memory: LoRA, 16-bit frozen weights, activation checkpointing, gradient
-- accumulation (docs/memory.md), the same keys in every training recipe.

--- The keys of recipe.memory_keys, to append to a recipe's own:
--     recipe.config(arg, "sft", recipe.with_memory_keys{ {...}, ... })
recipe.memory_keys = {
  {"lora", false, "train LoRA adapters, the rest frozen, instead of every weight"},
  {"lora_r", 16, "LoRA rank"},
  {"lora_alpha", 32, "LoRA alpha (the update is scaled by alpha / r)"},
  {"lora_dropout", 0.0, "dropout on the adapters' input"},
  {"lora_targets", "all-linear", "layers to adapt: all-linear, a comma-separated list of names, or a regex"},
  {"grad_accum", 1, "micro-batches per optimizer step (the loss is normalised over the whole step)"},
  {"checkpoint", 0, "activation checkpointing: true (every block), k (k blocks at a time) or false", "blocks"},
  {"weights_dtype", "float32", "storage of frozen weights: float32, bfloat16 or float16"},
  {"save_merged", false, "with lora: also write the merged model as a Hugging Face folder (merged/)"},
}

--- specs followed by recipe.memory_keys.
function recipe.with_memory_keys(specs)
  local out = {}
  for _, s in ipairs(specs) do out[#out + 1] = s end
  for _, s in ipairs(recipe.memory_keys) do out[#out + 1] = s end
  return out
end

-- target_modules from the lora_targets key: "all-linear", a list, or a regex
-- (anything with a character other than letters, digits, _ , . and commas).
local function lora_targets(v)
  if v == "all-linear" or v:find("[^%w_.,%s]") then return v end
  local list = {}
  for name in v:gmatch("[^,%s]+") do list[#list + 1] = name end
  return list
end

--- Applies a recipe's memory keys to the model it trains: LoRA adapters
-- (lora, lora_r, lora_alpha, lora_dropout, lora_targets; opts.modules_to_save
-- lists heads trained in full, e.g. {"reward_head"}), then the frozen weights'
-- storage (weights_dtype) and activation checkpointing (checkpoint).
-- Returns model.
function recipe.prepare_model(model, config, opts)
  opts = opts or {}
  if config.lora then
    require("lualign.lora").apply(model, {r = config.lora_r, alpha = config.lora_alpha,
      dropout = config.lora_dropout, target_modules = lora_targets(config.lora_targets),
      modules_to_save = opts.modules_to_save})
  end
  if config.weights_dtype ~= "float32" then model:frozen_weights_to(config.weights_dtype) end
  model:set_checkpointing(config.checkpoint)
  return model
end

--- A frozen model (a reward model, a reference without LoRA) with its
-- weights stored as weights_dtype says.  Returns model.
function recipe.prepare_frozen(model, config)
  model:requires_grad(false):eval()
  if config.weights_dtype ~= "float32" then model:frozen_weights_to(config.weights_dtype) end
  return model
end

--- The reference model of a policy, as a function that runs fn(ref) and
-- returns what it returns: with lora, the policy itself with its adapters
-- turned off for the call (no second copy in memory); otherwise the frozen
-- model load() returns, loaded now.
function recipe.reference(policy, config, load)
  if config.lora then
    local lora = require "lualign.lora"
    return function(fn)
      local off <close> = lora.disable(policy)
      return fn(policy)
    end
  end
  local ref = recipe.prepare_frozen(load(), config)
  return function(fn) return fn(ref) end
end

--- One optimizer step's gradients from a batch under grad_accum: the batch
-- split into grad_accum micro-batches, each micro-batch's mean loss
-- (loss_fn(mb) -> loss [, metrics]) backpropagated with its share of the
-- units count(mb) (la.accumulate.tokens or .pairs) of the whole batch.
-- Under data parallelism (dp, la.dist.data_parallel) the batch is this rank's
-- share and the loss and metrics are the global batch's.
-- Returns the batch's loss (a number) and metrics, as la.accumulate.run.
function recipe.accumulate(config, batch, count, loss_fn, dp)
  local A = require "lualign.accumulate"
  local r = A.run(A.split(batch, config.grad_accum), count, loss_fn, dp)
  return r.loss, r.metrics
end

--- The weights a run writes for the next stage to load: the model's state
-- dict, or with LoRA adapters the merged weights of a plain model.
function recipe.model_weights(model)
  local lora = require "lualign.lora"
  if lora.has_adapters(model) then return lora.merged_state_dict(model) end
  return model:state_dict()
end

--- JSON text of a Lua value with sorted keys and integers kept as integers
-- (Debian's lua-cjson 2.1.0 cannot be told to sort); NaN and inf become null.
function recipe.json(v)
  local t = type(v)
  if t == "table" then
    if #v > 0 or next(v) == nil then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = recipe.json(x) end
      return "[" .. table.concat(parts, ", ") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ": " .. recipe.json(v[k]) end
    return "{" .. table.concat(parts, ", ") .. "}"
  elseif t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return string.format("%.9g", v)
  elseif t == "string" or t == "boolean" then
    return cjson.encode(v)
  end
  return "null"
end

return recipe
