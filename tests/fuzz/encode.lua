-- tests/fuzz/encode.lua -- encode on arbitrary bytes (see
-- fuzz_lua_harness.c) with GPT-2's tokenizer and with a small trained one
-- that has special tokens.  Properties: decode(encode(s)) == s for any bytes,
-- with and without special tokens recognised; the merge heap (used for long
-- words) gives the same ids as the linear scan; encoding again (from the
-- word cache) gives the same ids.
local la = require "lualign"
la.set_num_threads(1)
local bpe = require("lualign.core").bpe

local gpt2 = la.tokenizer.load("gpt2")
local gpt2_heap = la.tokenizer.load("gpt2")
bpe.set_heap_threshold(gpt2_heap._bpe, 0)
local small = la.tokenizer.train({"the cat sat on the mat; the dog ate the hat. 1234 1234 caf\195\169 caf\195\169"},
  {vocab_size = 300, min_frequency = 1})
local small_heap = la.tokenizer.train({"the cat sat on the mat; the dog ate the hat. 1234 1234 caf\195\169 caf\195\169"},
  {vocab_size = 300, min_frequency = 1})
bpe.set_heap_threshold(small_heap._bpe, 0)

local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

local function check(tok, heap, s, split)
  local opts = split and {split_special_tokens = true} or nil
  local ids = tok:encode(s, opts)
  local back = tok:decode(ids)
  if back ~= s then error(string.format("decode(encode(s)) ~= s for s = %q (got %q)", s, back), 0) end
  if not same(ids, tok:encode(s, opts)) then error(string.format("encoding %q twice differs", s), 0) end
  if not same(ids, heap:encode(s, opts)) then error(string.format("heap and scan differ on %q", s), 0) end
end

return function(s)
  for _, split in ipairs({false, true}) do
    check(gpt2, gpt2_heap, s, split)
    check(small, small_heap, s, split)
  end
end
