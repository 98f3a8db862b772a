-- tests/fuzz/jsonl.lua -- the JSONL readers on arbitrary bytes (see
-- fuzz_lua_harness.c).  The bytes are written to a file and read as SFT,
-- preference and prompt data.  Each reader must give examples or raise an
-- error "FILE:LINE: message"; examples that were accepted must then go
-- through tokenisation and batching without error.
local la = require "lualign"
la.set_num_threads(1)
local data = la.data
local path = FUZZ_TMPDIR .. "/fuzz.jsonl"
local tok = la.tokenizer.byte()
local prefix = path .. ":"

local function collect(kind)
  local list = {}
  local ok, err = pcall(function()
    for ex in data[kind](path) do list[#list + 1] = ex end
  end)
  if ok then return list end
  if type(err) ~= "string" or err:sub(1, #prefix) ~= prefix or not err:sub(#prefix + 1):match("^%d+: %S") then
    error(string.format("%s reader: an error without FILE:LINE: %s", kind, tostring(err)), 0)
  end
  return nil
end

return function(bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  local sft = collect("sft")
  if sft and #sft > 0 then
    local loader = data.sft_loader(sft, tok, {batch_size = 4, max_len = 48, seed = 1})
    for batch in loader:epoch(1) do assert(batch.ids:dim() == 2) end
    local packed = data.sft_loader(sft, tok, {batch_size = 2, max_len = 48, pack = true, seed = 1})
    for batch in packed:epoch(1) do assert(batch.ids:dim() == 2) end
  end
  local pref = collect("preference")
  if pref and #pref > 0 then
    for _, ex in ipairs(pref) do
      assert(ex.p >= 0.5 and ex.p <= 1, "p out of [0.5, 1] after orientation")
    end
    local loader = data.preference_loader(pref, tok, {batch_size = 4, max_len = 48, seed = 1})
    for batch in loader:epoch(1) do assert(batch.chosen.ids:dim() == 2) end
  end
  local prompts = collect("prompts")
  if prompts and #prompts > 0 then
    local loader = data.prompt_loader(prompts, tok, {batch_size = 4, max_len = 48, seed = 1})
    for batch in loader:epoch(1) do assert(batch.ids:dim() == 2) end
  end
end
