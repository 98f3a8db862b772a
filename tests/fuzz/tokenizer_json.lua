-- tests/fuzz/tokenizer_json.lua -- the tokenizer loaders on arbitrary bytes
-- (see fuzz_lua_harness.c), through lua-cjson and tokenizer.lua into the C
-- engine.  An input starting with "GPT2\n" is split at its first NUL byte
-- into encoder.json and vocab.bpe; any other input is a tokenizer.json.
-- Loading must give a tokenizer or raise an error "tokenizer.load: ...";
-- a tokenizer that loaded must encode and decode text (errors from encode
-- are allowed only for bytes the vocabulary cannot spell).
local la = require "lualign"
la.set_num_threads(1)
local dir = FUZZ_TMPDIR .. "/tok"
require("lualign.sys").mkdir(dir)

local function write(name, s)
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write(s)
  f:close()
end

local sample = "Hello world, <|endoftext|> caf\195\169 42!\n\t\255\0x"

return function(bytes)
  os.remove(dir .. "/tokenizer.json")
  os.remove(dir .. "/encoder.json")
  os.remove(dir .. "/vocab.bpe")
  os.remove(dir .. "/tokenizer_config.json")
  local path
  if bytes:sub(1, 5) == "GPT2\n" then
    local z = bytes:find("\0", 6, true) or #bytes + 1
    write("encoder.json", bytes:sub(6, z - 1))
    write("vocab.bpe", bytes:sub(z + 1))
    path = dir
  else
    write("tokenizer.json", bytes)
    path = dir .. "/tokenizer.json"
  end
  local ok, tok = pcall(la.tokenizer.load, path)
  if not ok then
    if type(tok) ~= "string" or not tok:match("^tokenizer%.load: ") then
      error("load: an error not starting with 'tokenizer.load: ': " .. tostring(tok), 0)
    end
    return
  end
  for _, text in ipairs({sample, bytes:sub(1, 200)}) do
    local ok2, ids = pcall(tok.encode, tok, text)
    if ok2 then
      for _, id in ipairs(ids) do
        assert(math.type(id) == "integer" and id >= 0 and id < tok.vocab_size, "encode gave an id outside the vocabulary")
      end
      tok:decode(ids)
    elseif type(ids) ~= "string" or not ids:match("has no token for byte") then
      error("encode: " .. tostring(ids), 0)
    end
  end
end
